#include "observe/metrics.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <set>

#include "common/json_text.h"

namespace egressd::observe {

namespace {

bool is_name_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool is_name_char(char c) { return is_name_start(c) || (c >= '0' && c <= '9'); }

bool is_valid_name(const std::string& name) {
    if (name.empty() || !is_name_start(name[0])) return false;
    return std::all_of(name.begin(), name.end(), is_name_char);
}

bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The exposition format escapes backslash and newline in HELP text, and the
// double quote as well in label values.
enum class Escape { help, label_value };
void append_escaped(std::string& out, const std::string& text, Escape what) {
    for (const char c : text) {
        if (c == '\\') {
            out += "\\\\";
        } else if (c == '\n') {
            out += "\\n";
        } else if (c == '"' && what == Escape::label_value) {
            out += "\\\"";
        } else {
            out += c;
        }
    }
}

// `{a="x",b="y"` without the closing brace, so that a histogram can add `le`.
// Empty when there are no labels.
std::string label_prefix(const std::vector<std::string>& names, const std::vector<std::string>& values) {
    std::string out;
    for (std::size_t i = 0; i < names.size(); ++i) {
        out += i == 0 ? '{' : ',';
        out += names[i];
        out += "=\"";
        append_escaped(out, values[i], Escape::label_value);
        out += '"';
    }
    return out;
}

std::string close_labels(const std::string& prefix) { return prefix.empty() ? std::string() : prefix + "}"; }

void append_sample(std::string& out, const std::string& name, const std::string& labels, double value) {
    out += name;
    out += labels;
    out += ' ';
    out += format_value(value);
    out += '\n';
}

std::string join(const std::vector<std::string>& items) {
    std::string out;
    for (const auto& item : items) {
        if (!out.empty()) out += ", ";
        out += item;
    }
    return out;
}

std::vector<std::string> series_names(const std::string& name, MetricType type) {
    if (type == MetricType::histogram) return {name + "_bucket", name + "_sum", name + "_count"};
    return {name};
}

}  // namespace

std::string format_value(double value) {
    if (std::isnan(value)) return "NaN";
    if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
    constexpr double kExactIntegers = 9007199254740992.0;  // 2^53
    if (value == std::floor(value) && std::fabs(value) <= kExactIntegers) {
        return fmt::format("{}", static_cast<long long>(value));  // also turns -0 into "0"
    }
    char buffer[64];
    const auto result = std::to_chars(buffer, buffer + sizeof buffer, value);  // shortest round trip
    return std::string(buffer, result.ptr);
}

const char* type_name(MetricType type) {
    switch (type) {
        case MetricType::counter: return "counter";
        case MetricType::gauge: return "gauge";
        case MetricType::histogram: return "histogram";
    }
    return "untyped";
}

// ---- children -----------------------------------------------------------------

void Counter::inc(double amount) {
    if (!(amount >= 0)) return;  // negative or NaN
    std::lock_guard lock(mutex_);
    value_ += amount;
}

void Counter::set_total(double total) {
    if (!std::isfinite(total) || total < 0) return;
    std::lock_guard lock(mutex_);
    value_ += total >= last_total_ ? total - last_total_ : total;
    last_total_ = total;
}

double Counter::value() const {
    std::lock_guard lock(mutex_);
    return value_;
}

void Gauge::set(double value) {
    std::lock_guard lock(mutex_);
    value_ = value;
}

void Gauge::inc(double amount) {
    std::lock_guard lock(mutex_);
    value_ += amount;
}

void Gauge::dec(double amount) {
    std::lock_guard lock(mutex_);
    value_ -= amount;
}

double Gauge::value() const {
    std::lock_guard lock(mutex_);
    return value_;
}

Histogram::Histogram(const std::vector<double>* bounds) : bounds_(bounds), counts_(bounds->size() + 1, 0) {}

void Histogram::observe(double value) {
    if (std::isnan(value)) return;
    const auto index =
        static_cast<std::size_t>(std::lower_bound(bounds_->begin(), bounds_->end(), value) - bounds_->begin());
    std::lock_guard lock(mutex_);
    ++counts_[index];
    sum_ += value;
    ++count_;
}

Histogram::Snapshot Histogram::snapshot() const {
    Snapshot snapshot;
    std::lock_guard lock(mutex_);
    snapshot.cumulative.reserve(counts_.size());
    std::uint64_t running = 0;
    for (const auto count : counts_) {
        running += count;
        snapshot.cumulative.push_back(running);
    }
    snapshot.sum = sum_;
    snapshot.count = count_;
    return snapshot;
}

// ---- families -------------------------------------------------------------------

template <typename Child>
Family<Child>::Family(std::string name, std::string help, std::vector<std::string> label_names, MetricType type,
                      std::size_t max_label_sets, Counter* dropped, std::vector<double> bounds)
    : FamilyBase(std::move(name), std::move(help), std::move(label_names), type, max_label_sets, dropped),
      bounds_(std::move(bounds)) {
    if (label_names_.empty()) children_.emplace(std::vector<std::string>{}, make_child());
}

template <typename Child>
std::unique_ptr<Child> Family<Child>::make_child() const {
    if constexpr (std::is_same_v<Child, Histogram>) {
        return std::make_unique<Histogram>(&bounds_);
    } else {
        return std::make_unique<Child>();
    }
}

template <typename Child>
Child& Family<Child>::labels(const std::vector<std::string>& values) {
    // A wrong number of values is a programming error; it shows as a folded label set rather than a crash.
    const bool wrong_arity = values.size() != label_names_.size();
    std::vector<std::string> key;
    if (!wrong_arity) {
        key.reserve(values.size());
        // The exposition format is UTF-8: invalid bytes become U+FFFD.
        for (const auto& value : values) key.push_back(valid_utf8(value));
    }
    return find_or_create(std::move(key), wrong_arity);
}

// A new key beyond the cap, or `fold`, means the "other" child.
template <typename Child>
Child& Family<Child>::find_or_create(std::vector<std::string> key, bool fold) {
    bool folded = false;
    Child* child = nullptr;
    {
        std::lock_guard lock(mutex_);
        if (!fold) {
            const auto it = children_.find(key);
            if (it != children_.end()) return *it->second;
        }
        const std::size_t distinct = children_.size() - (has_overflow_ ? 1 : 0);
        if (fold || (dropped_ != nullptr && distinct >= max_label_sets_)) {
            folded = true;
            key.assign(label_names_.size(), kOverflowLabelValue);
            has_overflow_ = true;
        }
        auto& slot = children_[key];
        if (!slot) slot = make_child();
        child = slot.get();
    }
    if (folded && dropped_ != nullptr) dropped_->inc();
    return *child;
}

template <typename Child>
bool Family<Child>::remove(const std::vector<std::string>& values) {
    if (label_names_.empty() || values.size() != label_names_.size()) return false;
    std::vector<std::string> key;
    key.reserve(values.size());
    for (const auto& value : values) key.push_back(valid_utf8(value));
    std::lock_guard lock(mutex_);
    if (has_overflow_ && std::all_of(key.begin(), key.end(), [](const auto& v) { return v == kOverflowLabelValue; })) {
        has_overflow_ = false;
    }
    return children_.erase(key) > 0;
}

template <typename Child>
void Family<Child>::clear() {
    if (label_names_.empty()) return;
    std::lock_guard lock(mutex_);
    children_.clear();
    has_overflow_ = false;
}

template <typename Child>
std::size_t Family<Child>::size() const {
    std::lock_guard lock(mutex_);
    return children_.size();
}

template <typename Child>
void Family<Child>::render(std::string& out) const {
    out += "# HELP ";
    out += name_;
    out += ' ';
    append_escaped(out, help_, Escape::help);
    out += "\n# TYPE ";
    out += name_;
    out += ' ';
    out += type_name(type_);
    out += '\n';

    std::lock_guard lock(mutex_);
    for (const auto& [values, child] : children_) {
        const std::string prefix = label_prefix(label_names_, values);
        if constexpr (std::is_same_v<Child, Histogram>) {
            const Histogram::Snapshot snapshot = child->snapshot();
            const std::string bucket = name_ + "_bucket";
            const std::string separator = prefix.empty() ? "{" : prefix + ",";
            for (std::size_t i = 0; i < bounds_.size(); ++i) {
                append_sample(out, bucket, separator + "le=\"" + format_value(bounds_[i]) + "\"}",
                              static_cast<double>(snapshot.cumulative[i]));
            }
            append_sample(out, bucket, separator + "le=\"+Inf\"}", static_cast<double>(snapshot.count));
            append_sample(out, name_ + "_sum", close_labels(prefix), snapshot.sum);
            append_sample(out, name_ + "_count", close_labels(prefix), static_cast<double>(snapshot.count));
        } else {
            append_sample(out, name_, close_labels(prefix), child->value());
        }
    }
}

template class Family<Counter>;
template class Family<Gauge>;
template class Family<Histogram>;

// ---- registry -------------------------------------------------------------------

Registry::Registry() : Registry(Options{}) {}

Registry::Registry(Options options) : options_(options) {
    auto dropped = add<Counter>(kLabelsDroppedMetric,
                                "Updates of label sets folded into the \"other\" child because the metric reached its "
                                "cap of distinct label sets, by metric.",
                                {"metric"}, MetricType::counter, {});
    dropped_ = dropped.value();  // a constant, valid definition
}

Registry::~Registry() = default;

Result<CounterFamily*> Registry::counter(const std::string& name, const std::string& help,
                                         std::vector<std::string> label_names) {
    return add<Counter>(name, help, std::move(label_names), MetricType::counter, {});
}

Result<GaugeFamily*> Registry::gauge(const std::string& name, const std::string& help,
                                     std::vector<std::string> label_names) {
    return add<Gauge>(name, help, std::move(label_names), MetricType::gauge, {});
}

Result<HistogramFamily*> Registry::histogram(const std::string& name, const std::string& help,
                                             std::vector<double> bounds, std::vector<std::string> label_names) {
    return add<Histogram>(name, help, std::move(label_names), MetricType::histogram, std::move(bounds));
}

namespace {

// The checks of a family's definition that need no other family (see
// Registry in metrics.h); `what` names it in the error.
Status check_definition(const std::string& what, const std::string& name, MetricType type, const std::string& help,
                        const std::vector<std::string>& label_names, const std::vector<double>& bounds) {
    if (name.size() >= 2 && name.compare(0, 2, "__") == 0) {
        return make_error(fmt::format("{}: names starting with \"__\" are reserved", what));
    }
    if (!is_valid_name(name)) {
        return make_error(
            fmt::format("{}: invalid metric name: must match [a-zA-Z_][a-zA-Z0-9_]* (colons are "
                        "reserved for recording rules)",
                        what));
    }
    if (type == MetricType::counter && (!ends_with(name, "_total") || name == "_total")) {
        return make_error(fmt::format("{}: a counter's name must end in \"_total\"", what));
    }
    if (help.empty()) return make_error(fmt::format("{}: help text is empty", what));
    std::set<std::string> seen;
    for (const auto& label : label_names) {
        if (label.size() >= 2 && label.compare(0, 2, "__") == 0) {
            return make_error(fmt::format("{}: label name \"{}\" is reserved (\"__\" prefix)", what, label));
        }
        if (!is_valid_name(label)) {
            return make_error(
                fmt::format("{}: invalid label name \"{}\": must match [a-zA-Z_][a-zA-Z0-9_]*", what, label));
        }
        if (type == MetricType::histogram && label == "le") {
            return make_error(fmt::format("{}: label name \"le\" is reserved for histogram buckets", what));
        }
        if (!seen.insert(label).second) {
            return make_error(fmt::format("{}: label name \"{}\" is repeated", what, label));
        }
    }
    for (std::size_t i = 0; i < bounds.size(); ++i) {
        if (!std::isfinite(bounds[i])) {
            return make_error(
                fmt::format("{}: bucket bound #{} is not finite (the +Inf bucket is implicit)", what, i + 1));
        }
        if (i > 0 && !(bounds[i] > bounds[i - 1])) {
            return make_error(fmt::format("{}: bucket bounds must be strictly increasing ({} after {})", what,
                                          format_value(bounds[i]), format_value(bounds[i - 1])));
        }
    }

    return {};
}

}  // namespace

template <typename Child>
Result<Family<Child>*> Registry::add(const std::string& name, const std::string& raw_help,
                                     std::vector<std::string> label_names, MetricType type,
                                     std::vector<double> bounds) {
    const std::string what = fmt::format("{} \"{}\"", type_name(type), name);
    const std::string help = valid_utf8(raw_help);
    if (auto status = check_definition(what, name, type, help, label_names, bounds); !status) return status.error();

    std::unique_lock lock(mutex_);
    if (const auto it = families_.find(name); it != families_.end()) {
        auto* existing = dynamic_cast<Family<Child>*>(it->second.get());
        if (existing != nullptr && existing->type() == type && existing->help() == help &&
            existing->label_names() == label_names && existing->bounds() == bounds) {
            return existing;
        }
        return make_error(fmt::format("{}: already registered with another definition ({}, labels [{}])", what,
                                      type_name(it->second->type()), join(it->second->label_names())));
    }
    const auto mine = series_names(name, type);
    for (const auto& [other_name, other] : families_) {
        for (const auto& series : series_names(other_name, other->type())) {
            if (std::find(mine.begin(), mine.end(), series) != mine.end()) {
                return make_error(fmt::format("{}: its series {} collides with {} \"{}\"", what, series,
                                              type_name(other->type()), other_name));
            }
        }
    }
    Counter* dropped = nullptr;
    if (!label_names.empty() && dropped_ != nullptr) dropped = &dropped_->labels({name});
    auto family = std::make_unique<Family<Child>>(name, help, std::move(label_names), type, options_.max_label_sets,
                                                  dropped, std::move(bounds));
    auto* raw = family.get();
    families_.emplace(name, std::move(family));
    return raw;
}

std::string Registry::render() const {
    std::string out;
    std::shared_lock lock(mutex_);
    for (const auto& [name, family] : families_) family->render(out);
    return out;
}

}  // namespace egressd::observe
