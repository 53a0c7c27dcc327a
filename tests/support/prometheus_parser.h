// A strict parser of the Prometheus text exposition format 0.0.4, to validate
// what egressd serves on /metrics (unit and end-to-end tests). No test
// framework inside: errors are values ("line N: what is wrong").
//
// Accepted, as the format describes: "# HELP name text" (escapes \\ and \n),
// "# TYPE name counter|gauge|histogram|summary|untyped", other "#" lines as
// comments, empty lines, samples `name{label="value",...} value [timestamp]`
// (label value escapes \\, \" and \n; a trailing comma in the braces; blanks
// between the tokens), values as decimal floats, "+Inf", "-Inf", "NaN".
//
// Rejected (beyond syntax errors):
//  - input not ending in "\n", carriage returns, invalid UTF-8;
//  - unknown escapes; "Inf"/"inf"/hex floats (only the spellings above);
//  - blanks inside the braces or between the name and "{";
//  - a HELP or TYPE line repeated, or after the metric's samples;
//  - the lines of one metric not in one group;
//  - a series (name and label set) repeated;
//  - label names starting with "__", or repeated within a sample;
//  - timestamps, unless ParseOptions::allow_timestamps;
//  - for a counter: a negative or NaN value; for a histogram: samples other than
//    _bucket (with "le"), _sum and _count (without), per label set buckets in
//    increasing "le" order with non-decreasing counts, the last one "+Inf" and
//    equal to _count, a _sum and a _count; for a summary: "quantile" in [0, 1].
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/result.h"

namespace egressd::prom {

struct Label {
    std::string name;
    std::string value;  // unescaped
    bool operator==(const Label&) const = default;
};

struct Sample {
    std::string name;           // as written: "x_total", "h_bucket", ...
    std::vector<Label> labels;  // in the order written
    double value = 0;
    std::optional<int64_t> timestamp_ms;
    size_t line = 0;

    std::optional<std::string> label(std::string_view label_name) const;
};

struct MetricFamily {
    std::string name;
    std::string type = "untyped";     // counter, gauge, histogram, summary, untyped
    bool typed = false;               // a TYPE line was present
    std::optional<std::string> help;  // unescaped
    std::vector<Sample> samples;      // in the order written
};

struct Exposition {
    std::vector<MetricFamily> families;  // in the order written

    const MetricFamily* family(std::string_view name) const;
    // The sample with exactly this name and label set (in any order).
    const Sample* find(std::string_view name, const std::vector<Label>& labels = {}) const;
    std::optional<double> value(std::string_view name, const std::vector<Label>& labels = {}) const;
    size_t sample_count() const;
};

struct ParseOptions {
    bool allow_timestamps = false;
};

Result<Exposition> parse_exposition(std::string_view text, const ParseOptions& options = {});

}  // namespace egressd::prom
