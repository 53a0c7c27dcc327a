// prom_check: validates a Prometheus text exposition on stdin with the strict
// parser of the unit tests, for the end-to-end tests.
//
//   prom_check                          exit 0 when valid, else the error on stderr
//   prom_check NAME [LABEL=VALUE ...]   also prints that sample's value (0 when absent)
//   prom_check --sum NAME               also prints the sum of all samples of NAME
#include <iostream>
#include <iterator>
#include <string>

#include "prometheus_parser.h"

using namespace egressd;

int main(int argc, char** argv) {
    const std::string text((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
    auto parsed = prom::parse_exposition(text);
    if (!parsed) {
        std::cerr << "prom_check: " << parsed.error().describe() << "\n";
        return 1;
    }
    if (argc < 2) return 0;
    const std::string first = argv[1];
    if (first == "--sum" && argc == 3) {
        double sum = 0;
        if (const auto* family = parsed->family(argv[2]))
            for (const auto& sample : family->samples) sum += sample.value;
        std::cout << static_cast<long long>(sum) << "\n";
        return 0;
    }
    std::vector<prom::Label> labels;
    for (int i = 2; i < argc; ++i) {
        const std::string kv = argv[i];
        const auto eq = kv.find('=');
        if (eq == std::string::npos) {
            std::cerr << "prom_check: expected LABEL=VALUE, got " << kv << "\n";
            return 2;
        }
        labels.push_back({kv.substr(0, eq), kv.substr(eq + 1)});
    }
    std::cout << static_cast<long long>(parsed->value(first, labels).value_or(0)) << "\n";
    return 0;
}
