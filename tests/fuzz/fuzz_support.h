// What the fuzz targets share: the input as text, and checks that make a
// broken property a crash libFuzzer keeps (an abort with the reason).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>
#include <utility>

namespace egressd::fuzz {

inline std::string_view text(const uint8_t* data, size_t size) {
    return {reinterpret_cast<const char*>(data), size};
}

// The input cut at its first NUL byte: two inputs in one (the second empty
// when there is no NUL). Seeds stay readable files: "first\0second".
inline std::pair<std::string_view, std::string_view> split_at_nul(std::string_view input) {
    const size_t nul = input.find('\0');
    if (nul == std::string_view::npos) return {input, {}};
    return {input.substr(0, nul), input.substr(nul + 1)};
}

[[noreturn]] inline void fail(const char* property, std::string_view detail = {}) {
    std::fprintf(stderr, "fuzz property broken: %s\n%.*s\n", property, static_cast<int>(detail.size()),
                 detail.data());
    std::abort();
}

#define EGRESSD_FUZZ_CHECK(condition, detail) \
    do {                                      \
        if (!(condition)) ::egressd::fuzz::fail(#condition, (detail)); \
    } while (0)

}  // namespace egressd::fuzz
