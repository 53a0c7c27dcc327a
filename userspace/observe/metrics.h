// A small Prometheus metrics registry: counters, gauges and histograms with
// fixed buckets, rendered in the text exposition format 0.0.4.
//
// A family has a name, HELP text and label names; its children are created on
// first use, one per distinct list of label values. The number of children per
// family is capped (Registry::Options::max_label_sets): label sets beyond the
// cap are folded into one child whose label values are all "other", and
// egressd_metric_labels_dropped_total{metric="<family>"} counts each folded
// lookup. Per-identity metrics therefore stay bounded.
//
// Thread safety: every operation may be called from any thread. render() (the
// HTTP thread) sees each child in a consistent state (a histogram's buckets,
// sum and count always agree). A reference returned by labels() stays valid
// until that child is removed (remove(), clear()) or the registry is destroyed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

#include "common/result.h"

namespace egressd::observe {

inline constexpr const char* kPrometheusContentType = "text/plain; version=0.0.4; charset=utf-8";
inline constexpr std::size_t kDefaultMaxLabelSets = 1000;
inline constexpr const char* kLabelsDroppedMetric = "egressd_metric_labels_dropped_total";
inline constexpr const char* kOverflowLabelValue = "other";

// A monotonically increasing value. Never goes backwards in the output.
class Counter {
public:
    // Adds `amount`; negative or NaN amounts are ignored.
    void inc(double amount = 1.0);
    // Follows a total kept elsewhere (a kernel counter read as a sum). The
    // counter grows by the difference to the previous total; a total smaller
    // than the previous one is taken as a restart of the source from zero (a
    // map recreated), so the counter grows by the new total instead of going
    // backwards. The first call therefore sets the counter to `total` (plus
    // any inc()). Negative or non-finite totals are ignored.
    void set_total(double total);
    double value() const;

private:
    mutable std::mutex mutex_;
    double value_ = 0;
    double last_total_ = 0;
};

class Gauge {
public:
    void set(double value);
    void inc(double amount = 1.0);
    void dec(double amount = 1.0);
    double value() const;

private:
    mutable std::mutex mutex_;
    double value_ = 0;
};

class Histogram {
public:
    struct Snapshot {
        std::vector<std::uint64_t> cumulative;  // one per bound, then +Inf (== count)
        double sum = 0;
        std::uint64_t count = 0;
    };
    explicit Histogram(const std::vector<double>* bounds);
    // Counts `value` in the first bucket whose upper bound is >= value (bounds are
    // inclusive, as Prometheus' `le`). NaN is ignored.
    void observe(double value);
    Snapshot snapshot() const;
    const std::vector<double>& bounds() const { return *bounds_; }

private:
    const std::vector<double>* bounds_;  // owned by the family
    mutable std::mutex mutex_;
    std::vector<std::uint64_t> counts_;  // per bucket, not cumulative; last = above every bound
    double sum_ = 0;
    std::uint64_t count_ = 0;
};

enum class MetricType { counter, gauge, histogram };
const char* type_name(MetricType type);

// What every family has, whatever its child type.
class FamilyBase {
public:
    virtual ~FamilyBase() = default;
    const std::string& name() const { return name_; }
    const std::string& help() const { return help_; }
    const std::vector<std::string>& label_names() const { return label_names_; }
    MetricType type() const { return type_; }
    // Number of children, the "other" child included.
    virtual std::size_t size() const = 0;
    // Appends "# HELP", "# TYPE" and the samples.
    virtual void render(std::string& out) const = 0;

protected:
    FamilyBase(std::string name, std::string help, std::vector<std::string> label_names, MetricType type,
               std::size_t max_label_sets, Counter* dropped)
        : name_(std::move(name)),
          help_(std::move(help)),
          label_names_(std::move(label_names)),
          type_(type),
          max_label_sets_(max_label_sets),
          dropped_(dropped) {}

    const std::string name_;
    const std::string help_;
    const std::vector<std::string> label_names_;
    const MetricType type_;
    const std::size_t max_label_sets_;
    Counter* const dropped_;  // this family's child of egressd_metric_labels_dropped_total (null: never folds)
};

template <typename Child>
class Family final : public FamilyBase {
public:
    // The child for these label values (one per label name, in order), created
    // at first use. Beyond the cap, or when the number of values does not match
    // the label names, the "other" child (and a count in
    // egressd_metric_labels_dropped_total). Invalid UTF-8 in a value is replaced
    // by U+FFFD.
    Child& labels(const std::vector<std::string>& values);
    // The only child of a family without labels.
    Child& get() { return labels({}); }
    // Forgets one child (its series disappears from the output). Returns false
    // if there was none. References to it become invalid.
    bool remove(const std::vector<std::string>& values);
    // Forgets every child (a family without labels keeps one, reset to zero).
    void clear();
    std::size_t size() const override;
    void render(std::string& out) const override;

    // Histogram families only: the upper bounds, +Inf excluded.
    const std::vector<double>& bounds() const { return bounds_; }

    // For Registry only.
    Family(std::string name, std::string help, std::vector<std::string> label_names, MetricType type,
           std::size_t max_label_sets, Counter* dropped, std::vector<double> bounds);

private:
    std::unique_ptr<Child> make_child() const;
    Child& find_or_create(std::vector<std::string> key, bool fold);

    const std::vector<double> bounds_;
    mutable std::mutex mutex_;
    std::map<std::vector<std::string>, std::unique_ptr<Child>> children_;
    bool has_overflow_ = false;  // children_ holds the "other" child
};

using CounterFamily = Family<Counter>;
using GaugeFamily = Family<Gauge>;
using HistogramFamily = Family<Histogram>;

// Keeps the first error of a run of registrations, so that the run reads as a
// table: `requests_ = registrations.take(registry.counter(...));` and one
// check of status() at the end.
class Registrations {
public:
    template <typename FamilyType>
    FamilyType* take(Result<FamilyType*> result) {
        if (result.ok()) return *result;
        if (status_.ok()) status_ = result.error();
        return nullptr;
    }
    // The only child of a family without labels (nullptr if registration failed).
    template <typename FamilyType>
    auto take_only(Result<FamilyType*> result) -> decltype(&(*result)->get()) {
        auto* family = take(std::move(result));
        return family ? &family->get() : nullptr;
    }
    const Status& status() const { return status_; }

private:
    Status status_;
};

class Registry {
public:
    struct Options {
        // Distinct label sets per family before folding into "other".
        std::size_t max_label_sets = kDefaultMaxLabelSets;
    };

    Registry();
    explicit Registry(Options options);
    ~Registry();
    Registry(const Registry&) = delete;
    Registry& operator=(const Registry&) = delete;

    // Registration fails, with a message naming the metric, when:
    //  - a name is not [a-zA-Z_][a-zA-Z0-9_]* (colons are reserved for recording
    //    rules) or starts with "__";
    //  - a counter's name does not end in "_total";
    //  - a label name is invalid, reserved ("__" prefix; "le" in a histogram) or repeated;
    //  - histogram bounds are not finite and strictly increasing;
    //  - the name is registered with another type, help, labels or bounds, or one
    //    of its series names (name, or name_bucket/_sum/_count for a histogram)
    //    is a series name of another family.
    // Registering exactly the same definition again returns the same family.
    Result<CounterFamily*> counter(const std::string& name, const std::string& help,
                                   std::vector<std::string> label_names = {});
    Result<GaugeFamily*> gauge(const std::string& name, const std::string& help,
                               std::vector<std::string> label_names = {});
    Result<HistogramFamily*> histogram(const std::string& name, const std::string& help, std::vector<double> bounds,
                                       std::vector<std::string> label_names = {});

    // The text exposition format 0.0.4: families sorted by name, children in
    // the order of their label values, no timestamps.
    std::string render() const;

private:
    template <typename Child>
    Result<Family<Child>*> add(const std::string& name, const std::string& help, std::vector<std::string> label_names,
                               MetricType type, std::vector<double> bounds);

    const Options options_;
    mutable std::shared_mutex mutex_;
    std::map<std::string, std::unique_ptr<FamilyBase>> families_;
    CounterFamily* dropped_ = nullptr;
};

// Formats a sample value as Prometheus expects: integers without exponent up
// to 2^53, otherwise the shortest representation that reads back exactly;
// "+Inf", "-Inf", "NaN".
std::string format_value(double value);

}  // namespace egressd::observe
