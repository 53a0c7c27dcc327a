#include "prometheus_parser.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <map>
#include <stdexcept>

namespace egressd::prom {

namespace {

struct ParseError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

[[noreturn]] void fail(size_t line, const std::string& what) {
    throw ParseError("line " + std::to_string(line) + ": " + what);
}

bool is_blank(char c) { return c == ' ' || c == '\t'; }
bool is_letter(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_metric_start(char c) { return is_letter(c) || c == '_' || c == ':'; }
bool is_metric_char(char c) { return is_metric_start(c) || is_digit(c); }
bool is_label_start(char c) { return is_letter(c) || c == '_'; }
bool is_label_char(char c) { return is_label_start(c) || is_digit(c); }

bool valid_metric_name(std::string_view name) {
    return !name.empty() && is_metric_start(name[0]) && std::all_of(name.begin(), name.end(), is_metric_char);
}

bool starts_with(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }
bool ends_with(std::string_view s, std::string_view suffix) {
    return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

bool valid_utf8(std::string_view s) {
    size_t i = 0;
    while (i < s.size()) {
        const auto c = static_cast<unsigned char>(s[i]);
        size_t length;
        unsigned char min2 = 0x80, max2 = 0xbf;
        if (c < 0x80) {
            ++i;
            continue;
        } else if (c >= 0xc2 && c <= 0xdf) {
            length = 2;
        } else if (c >= 0xe0 && c <= 0xef) {
            length = 3;
            if (c == 0xe0) min2 = 0xa0;
            if (c == 0xed) max2 = 0x9f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            length = 4;
            if (c == 0xf0) min2 = 0x90;
            if (c == 0xf4) max2 = 0x8f;
        } else {
            return false;
        }
        if (i + length > s.size()) return false;
        const auto second = static_cast<unsigned char>(s[i + 1]);
        if (second < min2 || second > max2) return false;
        for (size_t k = 2; k < length; ++k) {
            const auto next = static_cast<unsigned char>(s[i + k]);
            if (next < 0x80 || next > 0xbf) return false;
        }
        i += length;
    }
    return true;
}

// "+Inf", "-Inf", "NaN" or [+-]?(D+(.D*)?|.D+)([eE][+-]?D+)? within double range.
std::optional<double> parse_float(std::string_view text) {
    if (text == "+Inf") return std::numeric_limits<double>::infinity();
    if (text == "-Inf") return -std::numeric_limits<double>::infinity();
    if (text == "NaN") return std::numeric_limits<double>::quiet_NaN();
    size_t i = 0;
    bool negative = false;
    if (i < text.size() && (text[i] == '+' || text[i] == '-')) negative = text[i++] == '-';
    const size_t start = i;
    size_t int_digits = 0, frac_digits = 0;
    while (i < text.size() && is_digit(text[i])) ++i, ++int_digits;
    if (i < text.size() && text[i] == '.') {
        ++i;
        while (i < text.size() && is_digit(text[i])) ++i, ++frac_digits;
    }
    if (int_digits + frac_digits == 0) return std::nullopt;
    if (i < text.size() && (text[i] == 'e' || text[i] == 'E')) {
        ++i;
        if (i < text.size() && (text[i] == '+' || text[i] == '-')) ++i;
        size_t exp_digits = 0;
        while (i < text.size() && is_digit(text[i])) ++i, ++exp_digits;
        if (exp_digits == 0) return std::nullopt;
    }
    if (i != text.size()) return std::nullopt;
    double value = 0;
    const auto result = std::from_chars(text.data() + start, text.data() + text.size(), value);
    if (result.ec != std::errc() || result.ptr != text.data() + text.size()) return std::nullopt;
    return negative ? -value : value;
}

std::string escape_label_value(std::string_view value) {
    std::string out;
    for (const char c : value) {
        if (c == '\\') {
            out += "\\\\";
        } else if (c == '"') {
            out += "\\\"";
        } else if (c == '\n') {
            out += "\\n";
        } else {
            out += c;
        }
    }
    return out;
}

std::string series_text(std::string_view name, const std::vector<Label>& labels) {
    std::string out(name);
    if (labels.empty()) return out;
    out += '{';
    for (size_t i = 0; i < labels.size(); ++i) {
        if (i > 0) out += ',';
        out += labels[i].name + "=\"" + escape_label_value(labels[i].value) + "\"";
    }
    return out + "}";
}

// Labels with an empty value are the same as no label; order does not matter.
std::vector<Label> canonical(const std::vector<Label>& labels) {
    std::vector<Label> out;
    for (const auto& label : labels) {
        if (!label.value.empty()) out.push_back(label);
    }
    std::sort(out.begin(), out.end(), [](const Label& a, const Label& b) { return a.name < b.name; });
    return out;
}

std::string series_key(std::string_view name, const std::vector<Label>& labels) {
    std::string key(name);
    for (const auto& label : canonical(labels)) {
        key += '\0';
        key += label.name;
        key += '\0';
        key += label.value;
    }
    return key;
}

std::string format_number(double value) {
    if (std::isnan(value)) return "NaN";
    if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
    char buffer[64];
    const auto result = std::to_chars(buffer, buffer + sizeof buffer, value);
    return std::string(buffer, result.ptr);
}

class Parser {
public:
    Parser(std::string_view text, const ParseOptions& options) : text_(text), options_(options) {}

    Exposition run() {
        if (text_.empty()) return {};
        size_t start = 0;
        size_t line = 0;
        while (start < text_.size()) {
            ++line;
            const size_t end = text_.find('\n', start);
            if (end == std::string_view::npos) fail(line, "the last line does not end with a newline");
            const std::string_view content = text_.substr(start, end - start);
            if (content.find('\r') != std::string_view::npos) fail(line, "carriage return in line");
            if (!valid_utf8(content)) fail(line, "invalid UTF-8");
            parse_line(line, content);
            start = end + 1;
        }
        check_histograms();
        check_summaries();
        return std::move(result_);
    }

private:
    MetricFamily& enter_group(size_t line, const std::string& name) {
        const auto it = index_.find(name);
        if (it != index_.end()) {
            if (it->second.index != current_) {
                fail(line, "the lines of " + name + " are not in one group (it appeared before, on line " +
                               std::to_string(it->second.first_line) + ")");
            }
            return result_.families[it->second.index];
        }
        current_ = result_.families.size();
        index_.emplace(name, Entry{current_, line});
        MetricFamily family;
        family.name = name;
        result_.families.push_back(std::move(family));
        return result_.families.back();
    }

    static size_t skip_blanks(std::string_view s, size_t p) {
        while (p < s.size() && is_blank(s[p])) ++p;
        return p;
    }
    static size_t token_end(std::string_view s, size_t p) {
        while (p < s.size() && !is_blank(s[p])) ++p;
        return p;
    }

    void parse_line(size_t line, std::string_view s) {
        size_t p = skip_blanks(s, 0);
        if (p == s.size()) return;  // empty lines are ignored
        if (s[p] == '#') {
            parse_comment(line, s.substr(p + 1));
        } else {
            parse_sample(line, s.substr(p));
        }
    }

    void parse_comment(size_t line, std::string_view s) {
        if (s.empty() || !is_blank(s[0])) return;  // "#..." is a plain comment
        size_t p = skip_blanks(s, 0);
        size_t e = token_end(s, p);
        const std::string_view keyword = s.substr(p, e - p);
        if (keyword != "HELP" && keyword != "TYPE") return;  // a plain comment
        p = skip_blanks(s, e);
        e = token_end(s, p);
        const std::string name(s.substr(p, e - p));
        if (name.empty()) fail(line, std::string(keyword) + " line without a metric name");
        if (!valid_metric_name(name)) fail(line, "invalid metric name \"" + name + "\" in " + std::string(keyword));
        p = skip_blanks(s, e);
        MetricFamily& family = enter_group(line, name);
        if (keyword == "HELP") {
            if (family.help) fail(line, "second HELP line for " + name);
            if (!family.samples.empty()) fail(line, "HELP line for " + name + " after its samples");
            family.help = unescape_help(line, s.substr(p));
        } else {
            e = token_end(s, p);
            const std::string type(s.substr(p, e - p));
            if (type.empty()) fail(line, "TYPE line for " + name + " without a type");
            if (type != "counter" && type != "gauge" && type != "histogram" && type != "summary" && type != "untyped") {
                fail(line, "unknown type \"" + type + "\" for " + name);
            }
            if (skip_blanks(s, e) != s.size()) fail(line, "unexpected text after the type of " + name);
            if (family.typed) fail(line, "second TYPE line for " + name);
            if (!family.samples.empty()) fail(line, "TYPE line for " + name + " after its samples");
            family.type = type;
            family.typed = true;
        }
    }

    static std::string unescape_help(size_t line, std::string_view s) {
        std::string out;
        for (size_t i = 0; i < s.size(); ++i) {
            if (s[i] != '\\') {
                out += s[i];
                continue;
            }
            if (i + 1 == s.size()) fail(line, "HELP text ends with a lone backslash");
            const char next = s[++i];
            if (next == '\\') {
                out += '\\';
            } else if (next == 'n') {
                out += '\n';
            } else {
                fail(line, std::string("invalid escape \"\\") + next + "\" in HELP text");
            }
        }
        return out;
    }

    void parse_sample(size_t line, std::string_view s) {
        Sample sample;
        sample.line = line;
        size_t p = 0;
        while (p < s.size() && is_metric_char(s[p])) ++p;
        sample.name = std::string(s.substr(0, p));
        if (!valid_metric_name(sample.name)) {
            fail(line, "expected a metric name at the start of the line, found \"" +
                           std::string(s.substr(0, token_end(s, 0))) + "\"");
        }
        if (p < s.size() && s[p] == '{') p = parse_labels(line, s, p + 1, sample);
        if (p == s.size()) fail(line, "sample " + sample.name + " has no value");
        if (!is_blank(s[p])) fail(line, "unexpected character '" + std::string(1, s[p]) + "' after " + sample.name);
        p = skip_blanks(s, p);
        size_t e = token_end(s, p);
        const std::string value_text(s.substr(p, e - p));
        if (!value_text.empty() && value_text[0] == '{') {
            fail(line, "blank between the metric name " + sample.name + " and \"{\"");
        }
        const auto value = parse_float(value_text);
        if (!value) fail(line, "invalid value \"" + value_text + "\" for " + sample.name);
        sample.value = *value;
        p = skip_blanks(s, e);
        if (p < s.size()) {
            e = token_end(s, p);
            const std::string timestamp(s.substr(p, e - p));
            if (!options_.allow_timestamps) fail(line, "timestamps are not allowed (" + timestamp + ")");
            int64_t ms = 0;
            const char* first = timestamp.data();
            const char* last = timestamp.data() + timestamp.size();
            const auto result = std::from_chars(first, last, ms);
            if (result.ec != std::errc() || result.ptr != last) fail(line, "invalid timestamp \"" + timestamp + "\"");
            sample.timestamp_ms = ms;
            if (skip_blanks(s, e) != s.size()) fail(line, "unexpected text after the timestamp");
        }
        add_sample(line, std::move(sample));
    }

    // Parses `name="value",...}` from p; returns the position after '}'.
    static size_t parse_labels(size_t line, std::string_view s, size_t p, Sample& sample) {
        while (true) {
            if (p < s.size() && s[p] == '}') return p + 1;
            const size_t start = p;
            if (p < s.size() && is_label_start(s[p])) {
                while (p < s.size() && is_label_char(s[p])) ++p;
            }
            if (p == start) {
                if (p == s.size()) fail(line, "unterminated label set of " + sample.name);
                fail(line, "expected a label name in the labels of " + sample.name + ", found '" +
                               std::string(1, s[p]) + "'");
            }
            Label label{std::string(s.substr(start, p - start)), {}};
            if (p == s.size() || s[p] != '=') fail(line, "expected \"=\" after label name \"" + label.name + "\"");
            ++p;
            if (p == s.size() || s[p] != '"') {
                fail(line, "expected '\"' to open the value of label \"" + label.name + "\"");
            }
            ++p;
            bool closed = false;
            while (p < s.size()) {
                const char c = s[p++];
                if (c == '"') {
                    closed = true;
                    break;
                }
                if (c != '\\') {
                    label.value += c;
                    continue;
                }
                if (p == s.size()) break;
                const char next = s[p++];
                if (next == '\\') {
                    label.value += '\\';
                } else if (next == '"') {
                    label.value += '"';
                } else if (next == 'n') {
                    label.value += '\n';
                } else {
                    fail(line,
                         std::string("invalid escape \"\\") + next + "\" in the value of label \"" + label.name + "\"");
                }
            }
            if (!closed) fail(line, "unterminated value of label \"" + label.name + "\"");
            if (starts_with(label.name, "__")) fail(line, "label name \"" + label.name + "\" is reserved");
            for (const auto& other : sample.labels) {
                if (other.name == label.name) fail(line, "label \"" + label.name + "\" is repeated");
            }
            sample.labels.push_back(std::move(label));
            if (p < s.size() && s[p] == ',') {
                ++p;
            } else if (p < s.size() && s[p] == '}') {
                return p + 1;
            } else {
                fail(line, "expected \",\" or \"}\" after the value of label \"" + sample.labels.back().name + "\"");
            }
        }
    }

    // The family a sample belongs to: a histogram's or summary's suffixed
    // samples belong to it, anything else to the family of its own name.
    std::string family_name(const std::string& name) const {
        for (const std::string_view suffix : {"_bucket", "_sum", "_count"}) {
            if (!ends_with(name, suffix)) continue;
            const std::string base = name.substr(0, name.size() - suffix.size());
            const auto it = index_.find(base);
            if (it == index_.end()) continue;
            const std::string& type = result_.families[it->second.index].type;
            if (type == "histogram" || (type == "summary" && suffix != "_bucket")) return base;
        }
        return name;
    }

    void add_sample(size_t line, Sample sample) {
        MetricFamily& family = enter_group(line, family_name(sample.name));
        const std::string& base = family.name;
        const std::string series = series_text(sample.name, sample.labels);
        if (family.type == "counter") {
            if (std::isnan(sample.value) || sample.value < 0) {
                fail(line, "counter " + series + " has a negative or NaN value");
            }
        } else if (family.type == "histogram") {
            const auto le = sample.label("le");
            if (sample.name == base + "_bucket") {
                if (!le) fail(line, series + " has no \"le\" label");
                if (!parse_float(*le) || std::isnan(*parse_float(*le))) {
                    fail(line, "invalid le \"" + *le + "\" in " + series);
                }
            } else if (sample.name == base + "_sum" || sample.name == base + "_count") {
                if (le) fail(line, series + " must not have an \"le\" label");
            } else {
                fail(line, "sample " + sample.name + " of histogram " + base + ": expected " + base + "_bucket, " +
                               base + "_sum or " + base + "_count");
            }
            if (sample.name != base + "_sum" &&
                (!(sample.value >= 0) || std::isinf(sample.value) || sample.value != std::floor(sample.value))) {
                fail(line, series + " value " + format_number(sample.value) + " is not a non-negative integer");
            }
        } else if (family.type == "summary") {
            const auto quantile = sample.label("quantile");
            if (sample.name == base) {
                if (!quantile) fail(line, series + " has no \"quantile\" label");
                const auto q = parse_float(*quantile);
                if (!q || !(*q >= 0 && *q <= 1)) fail(line, "invalid quantile \"" + *quantile + "\" in " + series);
            } else if (quantile) {
                fail(line, series + " must not have a \"quantile\" label");
            }
        }
        const std::string key = series_key(sample.name, sample.labels);
        const auto [it, inserted] = series_.emplace(key, line);
        if (!inserted) fail(line, "duplicate series " + series + " (first on line " + std::to_string(it->second) + ")");
        family.samples.push_back(std::move(sample));
    }

    void check_histograms() const {
        for (const auto& family : result_.families) {
            if (family.type != "histogram") continue;
            struct Bucket {
                double le;
                std::string le_text;
                double value;
                size_t line;
            };
            struct Group {
                std::vector<Label> labels;  // without le
                size_t first_line = 0;
                std::vector<Bucket> buckets;
                const Sample* sum = nullptr;
                const Sample* count = nullptr;
            };
            std::vector<Group> groups;
            std::map<std::string, size_t> by_key;
            for (const auto& sample : family.samples) {
                std::vector<Label> labels;
                for (const auto& label : sample.labels) {
                    if (label.name != "le") labels.push_back(label);
                }
                const std::string key = series_key(family.name, labels);
                auto [it, inserted] = by_key.emplace(key, groups.size());
                if (inserted) {
                    groups.emplace_back();
                    groups.back().labels = labels;
                    groups.back().first_line = sample.line;
                }
                Group& group = groups[it->second];
                if (sample.name == family.name + "_bucket") {
                    const std::string le = *sample.label("le");
                    group.buckets.push_back(Bucket{*parse_float(le), le, sample.value, sample.line});
                } else if (sample.name == family.name + "_sum") {
                    group.sum = &sample;
                } else {
                    group.count = &sample;
                }
            }
            for (const auto& group : groups) {
                const std::string series = series_text(family.name, group.labels);
                if (group.buckets.empty()) fail(group.first_line, "histogram " + series + " has no buckets");
                for (size_t i = 1; i < group.buckets.size(); ++i) {
                    const Bucket& previous = group.buckets[i - 1];
                    const Bucket& bucket = group.buckets[i];
                    if (!(bucket.le > previous.le)) {
                        fail(bucket.line, "histogram " + series + ": bucket le=\"" + bucket.le_text + "\" after le=\"" +
                                              previous.le_text + "\" (le must increase)");
                    }
                    if (bucket.value < previous.value) {
                        fail(bucket.line, "histogram " + series + ": bucket le=\"" + bucket.le_text + "\" counts " +
                                              format_number(bucket.value) + ", less than le=\"" + previous.le_text +
                                              "\" (" + format_number(previous.value) + ")");
                    }
                }
                const Bucket& last = group.buckets.back();
                if (!std::isinf(last.le)) {
                    fail(last.line,
                         "histogram " + series + ": the last bucket is le=\"" + last.le_text + "\", not le=\"+Inf\"");
                }
                if (group.count == nullptr) fail(group.first_line, "histogram " + series + " has no _count");
                if (group.sum == nullptr) fail(group.first_line, "histogram " + series + " has no _sum");
                if (group.count->value != last.value) {
                    fail(group.count->line, "histogram " + series + ": _count " + format_number(group.count->value) +
                                                " differs from the +Inf bucket (" + format_number(last.value) + ")");
                }
            }
        }
    }

    void check_summaries() const {
        for (const auto& family : result_.families) {
            if (family.type != "summary") continue;
            std::map<std::string, std::pair<bool, bool>> sum_count;  // key without quantile -> (sum, count)
            std::map<std::string, size_t> first_line;
            for (const auto& sample : family.samples) {
                std::vector<Label> labels;
                for (const auto& label : sample.labels) {
                    if (label.name != "quantile") labels.push_back(label);
                }
                const std::string key = series_text(family.name, canonical(labels));
                first_line.emplace(key, sample.line);
                auto& flags = sum_count[key];
                if (sample.name == family.name + "_sum") flags.first = true;
                if (sample.name == family.name + "_count") flags.second = true;
            }
            for (const auto& [key, flags] : sum_count) {
                if (!flags.first || !flags.second) fail(first_line[key], "summary " + key + " lacks _sum or _count");
            }
        }
    }

    struct Entry {
        size_t index;
        size_t first_line;
    };

    std::string_view text_;
    ParseOptions options_;
    Exposition result_;
    std::map<std::string, Entry> index_;
    std::map<std::string, size_t> series_;  // series key -> line
    size_t current_ = std::numeric_limits<size_t>::max();
};

}  // namespace

std::optional<std::string> Sample::label(std::string_view label_name) const {
    for (const auto& label : labels) {
        if (label.name == label_name) return label.value;
    }
    return std::nullopt;
}

const MetricFamily* Exposition::family(std::string_view name) const {
    for (const auto& family : families) {
        if (family.name == name) return &family;
    }
    return nullptr;
}

const Sample* Exposition::find(std::string_view name, const std::vector<Label>& labels) const {
    const std::string key = series_key(name, labels);
    for (const auto& family : families) {
        for (const auto& sample : family.samples) {
            if (sample.name == name && series_key(sample.name, sample.labels) == key) return &sample;
        }
    }
    return nullptr;
}

std::optional<double> Exposition::value(std::string_view name, const std::vector<Label>& labels) const {
    const Sample* sample = find(name, labels);
    if (sample == nullptr) return std::nullopt;
    return sample->value;
}

size_t Exposition::sample_count() const {
    size_t count = 0;
    for (const auto& family : families) count += family.samples.size();
    return count;
}

Result<Exposition> parse_exposition(std::string_view text, const ParseOptions& options) {
    try {
        return Parser(text, options).run();
    } catch (const ParseError& e) {
        return make_error(e.what());
    }
}

}  // namespace egressd::prom
