#include <doctest/doctest.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "observe/metrics.h"
#include "prometheus_parser.h"

using namespace egressd;
using namespace egressd::observe;
using egressd::prom::Label;

namespace {

prom::Exposition parse_ok(const std::string& text) {
    auto parsed = prom::parse_exposition(text);
    if (!parsed.ok()) FAIL(parsed.error().describe() << "\n--- text ---\n" << text);
    return *parsed;
}

template <typename T>
T* must(Result<T*> result) {
    if (!result.ok()) FAIL(result.error().describe());
    return result.value();
}

const std::string kDroppedHelp =
    "# HELP egressd_metric_labels_dropped_total Updates of label sets folded into the \"other\" child because the "
    "metric reached its cap of distinct label sets, by metric.\n"
    "# TYPE egressd_metric_labels_dropped_total counter\n";

}  // namespace

// ---- rendering ------------------------------------------------------------------

TEST_CASE("metrics: the exposition text, exactly") {
    Registry registry;
    auto* decisions = must(registry.counter("egressd_decisions_total", "Socket calls decided, by verdict and reason.",
                                            {"verdict", "reason"}));
    auto* generation = must(registry.gauge("egressd_generation", "Generation in force\n(kernel view) C:\\x"));
    auto* apply =
        must(registry.histogram("egressd_apply_seconds", "Time to apply a configuration.", {0.1, 0.25, 0.5, 1, 2}));
    decisions->labels({"deny", "default"}).inc();
    decisions->labels({"allow", "mesh_cidr"}).inc(2);
    decisions->labels({"allow", "loopback"}).inc(3);
    generation->get().set(7);
    for (const double seconds : {0.25, 0.5, 0.75, 3.0}) apply->get().observe(seconds);

    const std::string expected =
        "# HELP egressd_apply_seconds Time to apply a configuration.\n"
        "# TYPE egressd_apply_seconds histogram\n"
        "egressd_apply_seconds_bucket{le=\"0.1\"} 0\n"
        "egressd_apply_seconds_bucket{le=\"0.25\"} 1\n"
        "egressd_apply_seconds_bucket{le=\"0.5\"} 2\n"
        "egressd_apply_seconds_bucket{le=\"1\"} 3\n"
        "egressd_apply_seconds_bucket{le=\"2\"} 3\n"
        "egressd_apply_seconds_bucket{le=\"+Inf\"} 4\n"
        "egressd_apply_seconds_sum 4.5\n"
        "egressd_apply_seconds_count 4\n"
        "# HELP egressd_decisions_total Socket calls decided, by verdict and reason.\n"
        "# TYPE egressd_decisions_total counter\n"
        "egressd_decisions_total{verdict=\"allow\",reason=\"loopback\"} 3\n"
        "egressd_decisions_total{verdict=\"allow\",reason=\"mesh_cidr\"} 2\n"
        "egressd_decisions_total{verdict=\"deny\",reason=\"default\"} 1\n"
        "# HELP egressd_generation Generation in force\\n(kernel view) C:\\\\x\n"
        "# TYPE egressd_generation gauge\n"
        "egressd_generation 7\n" +
        kDroppedHelp + "egressd_metric_labels_dropped_total{metric=\"egressd_decisions_total\"} 0\n";
    const std::string text = registry.render();
    CHECK(text == expected);

    const auto parsed = parse_ok(text);
    REQUIRE(parsed.families.size() == 4);
    CHECK(parsed.families[0].name == "egressd_apply_seconds");
    CHECK(parsed.families[0].type == "histogram");
    CHECK(parsed.families[2].help == "Generation in force\n(kernel view) C:\\x");
    CHECK(parsed.value("egressd_decisions_total", {{"reason", "loopback"}, {"verdict", "allow"}}) == 3);
    CHECK(parsed.value("egressd_apply_seconds_bucket", {{"le", "0.25"}}) == 1);
}

TEST_CASE("metrics: a fresh registry renders only the drop counter, and validly") {
    Registry registry;
    CHECK(registry.render() == kDroppedHelp);
    const auto parsed = parse_ok(registry.render());
    REQUIRE(parsed.families.size() == 1);
    CHECK(parsed.families[0].samples.empty());
    // A family without labels has its one sample from the start.
    must(registry.gauge("egressd_up", "1 while running."));
    CHECK(parse_ok(registry.render()).value("egressd_up") == 0);
}

TEST_CASE("metrics: label values are escaped and read back unchanged") {
    Registry registry;
    auto* family = must(registry.counter("egressd_paths_total", "Paths.", {"path"}));
    const std::vector<std::string> values = {
        "C:\\dir\\file",        "say \"hi\"", "two\nlines",
        "all \\ \" \n of them", "",           "UTF-8: \xc3\xa9t\xc3\xa9 \xe2\x9c\x93"};
    for (const auto& value : values) family->labels({value}).inc();
    const std::string text = registry.render();
    CHECK(text.find("egressd_paths_total{path=\"C:\\\\dir\\\\file\"} 1\n") != std::string::npos);
    CHECK(text.find("egressd_paths_total{path=\"say \\\"hi\\\"\"} 1\n") != std::string::npos);
    CHECK(text.find("egressd_paths_total{path=\"two\\nlines\"} 1\n") != std::string::npos);
    const auto parsed = parse_ok(text);
    for (const auto& value : values) {
        CHECK_MESSAGE(parsed.value("egressd_paths_total", {{"path", value}}) == 1, value);
    }
}

TEST_CASE("metrics: invalid UTF-8 in a label value becomes U+FFFD, one series per result") {
    Registry registry;
    auto* family = must(registry.gauge("egressd_names", "Names.", {"name"}));
    family->labels({"a\xff"}).set(1);
    family->labels({"a\xfe"}).set(2);     // the same after replacement: the same child
    family->labels({"\xc0\xaf"}).set(3);  // an overlong "/" is invalid too
    CHECK(family->size() == 2);
    const auto parsed = parse_ok(registry.render());
    CHECK(parsed.value("egressd_names", {{"name", "a\xef\xbf\xbd"}}) == 2);
    CHECK(parsed.value("egressd_names", {{"name", "\xef\xbf\xbd\xef\xbf\xbd"}}) == 3);
}

TEST_CASE("metrics: values are written so that they read back exactly") {
    struct Case {
        double value;
        const char* text;
    };
    const double two53 = 9007199254740992.0;
    const Case cases[] = {
        {0, "0"},
        {-0.0, "0"},
        {1, "1"},
        {-3, "-3"},
        {1e6, "1000000"},
        {two53, "9007199254740992"},
        {two53 * 2, "18014398509481984"},  // exact, and shorter than 1.8014398509481984e+16
        {1e300, "1e+300"},
        {0.1, "0.1"},
        {-2.5, "-2.5"},
        {1e-7, "1e-07"},
        {1.0 / 3, "0.3333333333333333"},
        {std::numeric_limits<double>::infinity(), "+Inf"},
        {-std::numeric_limits<double>::infinity(), "-Inf"},
        {std::numeric_limits<double>::quiet_NaN(), "NaN"},
    };
    Registry registry;
    auto* family = must(registry.gauge("egressd_value", "Values.", {"i"}));
    for (size_t i = 0; i < std::size(cases); ++i) {
        CHECK(format_value(cases[i].value) == cases[i].text);
        family->labels({std::to_string(i)}).set(cases[i].value);
    }
    const auto parsed = parse_ok(registry.render());
    for (size_t i = 0; i < std::size(cases); ++i) {
        const auto value = parsed.value("egressd_value", {{"i", std::to_string(i)}});
        REQUIRE(value.has_value());
        if (std::isnan(cases[i].value)) {
            CHECK(std::isnan(*value));
        } else {
            CHECK(*value == cases[i].value);
        }
    }
}

// ---- semantics ------------------------------------------------------------------

TEST_CASE("metrics: counters only go up") {
    Counter counter;
    counter.inc();
    counter.inc(2.5);
    counter.inc(-4);  // ignored
    counter.inc(std::numeric_limits<double>::quiet_NaN());
    CHECK(counter.value() == 3.5);
}

TEST_CASE("metrics: set_total follows a total kept elsewhere, and survives its reset") {
    Registry registry;
    auto* family = must(registry.counter("egressd_kernel_decisions_total", "Kernel counts.", {"reason"}));
    Counter& counter = family->labels({"default"});
    std::vector<double> rendered;
    const auto step = [&](double total) {
        counter.set_total(total);
        rendered.push_back(
            *parse_ok(registry.render()).value("egressd_kernel_decisions_total", {{"reason", "default"}}));
    };
    step(10);  // the first reading is the total
    CHECK(counter.value() == 10);
    step(15);
    step(15);
    CHECK(counter.value() == 15);
    step(3);  // the source restarted (maps recreated): 3 new events
    CHECK(counter.value() == 18);
    step(5);
    CHECK(counter.value() == 20);
    counter.set_total(-1);  // ignored, as non-finite totals
    counter.set_total(std::numeric_limits<double>::infinity());
    counter.set_total(std::numeric_limits<double>::quiet_NaN());
    CHECK(counter.value() == 20);
    counter.inc();  // inc and set_total add up
    step(6);
    CHECK(counter.value() == 22);
    for (size_t i = 1; i < rendered.size(); ++i) CHECK(rendered[i] >= rendered[i - 1]);
    CHECK(rendered == std::vector<double>{10, 15, 15, 18, 20, 22});
}

TEST_CASE("metrics: gauges go both ways") {
    Gauge gauge;
    gauge.set(5);
    gauge.inc();
    gauge.dec(3);
    CHECK(gauge.value() == 3);
    gauge.set(-1.5);
    CHECK(gauge.value() == -1.5);
}

TEST_CASE("metrics: histogram buckets are inclusive upper bounds, cumulative in the output") {
    Registry registry;
    auto* family = must(registry.histogram("egressd_latency_seconds", "Latency.", {1, 2, 4}, {"op"}));
    Histogram& histogram = family->labels({"apply"});
    for (const double v : {0.5, 1.0, 1.5, 2.0, 4.0, 4.5, 100.0, -1.0}) histogram.observe(v);
    histogram.observe(std::numeric_limits<double>::quiet_NaN());  // ignored
    const auto snapshot = histogram.snapshot();
    CHECK(snapshot.cumulative == std::vector<uint64_t>{3, 5, 6, 8});
    CHECK(snapshot.count == 8);
    CHECK(snapshot.sum == 112.5);

    family->labels({"idle"});  // a child with no observations
    const auto parsed = parse_ok(registry.render());
    const auto bucket = [&](const char* op, const char* le) {
        return parsed.value("egressd_latency_seconds_bucket", {{"op", op}, {"le", le}});
    };
    CHECK(bucket("apply", "1") == 3);
    CHECK(bucket("apply", "2") == 5);
    CHECK(bucket("apply", "4") == 6);
    CHECK(bucket("apply", "+Inf") == 8);
    CHECK(parsed.value("egressd_latency_seconds_count", {{"op", "apply"}}) == 8);
    CHECK(parsed.value("egressd_latency_seconds_sum", {{"op", "apply"}}) == 112.5);
    CHECK(bucket("idle", "+Inf") == 0);
    CHECK(parsed.value("egressd_latency_seconds_sum", {{"op", "idle"}}) == 0);
    // Buckets come first, in le order, then _sum and _count, per child.
    const auto* histogram_family = parsed.family("egressd_latency_seconds");
    REQUIRE(histogram_family != nullptr);
    REQUIRE(histogram_family->samples.size() == 12);
    CHECK(histogram_family->samples[3].label("le") == "+Inf");
    CHECK(histogram_family->samples[4].name == "egressd_latency_seconds_sum");
    CHECK(histogram_family->samples[5].name == "egressd_latency_seconds_count");
}

TEST_CASE("metrics: a histogram without bounds has only the +Inf bucket") {
    Registry registry;
    auto* family = must(registry.histogram("egressd_sizes", "Sizes.", {}));
    family->get().observe(3);
    const auto parsed = parse_ok(registry.render());
    CHECK(parsed.value("egressd_sizes_bucket", {{"le", "+Inf"}}) == 1);
    CHECK(parsed.family("egressd_sizes")->samples.size() == 3);
}

TEST_CASE("metrics: children are created on first use and keep their order") {
    Registry registry;
    auto* family = must(registry.gauge("egressd_identity_policies", "Policies per identity.", {"namespace", "sa"}));
    Gauge& first = family->labels({"b", "x"});
    family->labels({"a", "z"}).set(1);
    family->labels({"a", "y"}).set(2);
    first.set(3);
    CHECK(&family->labels({"b", "x"}) == &first);
    CHECK(family->size() == 3);
    const auto parsed = parse_ok(registry.render());
    const auto& samples = parsed.family("egressd_identity_policies")->samples;
    REQUIRE(samples.size() == 3);
    CHECK(samples[0].labels == std::vector<Label>{{"namespace", "a"}, {"sa", "y"}});
    CHECK(samples[1].labels == std::vector<Label>{{"namespace", "a"}, {"sa", "z"}});
    CHECK(samples[2].labels == std::vector<Label>{{"namespace", "b"}, {"sa", "x"}});
    CHECK(registry.render() == registry.render());

    CHECK(family->remove({"a", "z"}));
    CHECK_FALSE(family->remove({"a", "z"}));
    CHECK(parse_ok(registry.render()).family("egressd_identity_policies")->samples.size() == 2);
    family->clear();
    CHECK(family->size() == 0);
    CHECK(parse_ok(registry.render()).family("egressd_identity_policies")->samples.empty());
}

TEST_CASE("metrics: label sets beyond the cap fold into \"other\" and are counted") {
    Registry registry(Registry::Options{3});
    auto* family = must(registry.counter("egressd_identity_decisions_total", "Decisions per identity.", {"identity"}));
    auto* unaffected = must(registry.gauge("egressd_other_family", "Another family.", {"k"}));
    for (int i = 0; i < 5; ++i) family->labels({"id" + std::to_string(i)}).inc();
    CHECK(family->size() == 4);  // id0..id2 and "other"
    Counter& other = family->labels({"id3"});
    CHECK(&family->labels({"id4"}) == &other);
    CHECK(&family->labels({kOverflowLabelValue}) == &other);
    family->labels({"id1"}).inc();  // an existing label set is not folded

    for (int i = 0; i < 3; ++i) unaffected->labels({std::to_string(i)}).set(i);  // caps are per family

    auto parsed = parse_ok(registry.render());
    CHECK(parsed.value("egressd_identity_decisions_total", {{"identity", "other"}}) == 2);
    CHECK(parsed.value("egressd_identity_decisions_total", {{"identity", "id1"}}) == 2);
    CHECK(!parsed.value("egressd_identity_decisions_total", {{"identity", "id3"}}).has_value());
    // id3 and id4 at first use, then again above; "other" itself exists, so looking it up is no drop.
    CHECK(parsed.value(kLabelsDroppedMetric, {{"metric", "egressd_identity_decisions_total"}}) == 4);
    CHECK(parsed.value(kLabelsDroppedMetric, {{"metric", "egressd_other_family"}}) == 0);
    CHECK(parsed.family("egressd_other_family")->samples.size() == 3);

    // Forgetting a label set makes room for a new one.
    CHECK(family->remove({"id0"}));
    family->labels({"id9"}).inc(7);
    parsed = parse_ok(registry.render());
    CHECK(parsed.value("egressd_identity_decisions_total", {{"identity", "id9"}}) == 7);
    CHECK(parsed.value(kLabelsDroppedMetric, {{"metric", "egressd_identity_decisions_total"}}) == 4);
    family->labels({"id10"});  // full again
    CHECK(parse_ok(registry.render()).value(kLabelsDroppedMetric, {{"metric", "egressd_identity_decisions_total"}}) ==
          5);
}

TEST_CASE("metrics: the default cap is 1,000 label sets") {
    Registry registry;
    auto* family = must(registry.gauge("egressd_many", "Many.", {"i"}));
    for (int i = 0; i < 1100; ++i) family->labels({std::to_string(i)}).set(i);
    CHECK(family->size() == 1001);
    const auto parsed = parse_ok(registry.render());
    CHECK(parsed.value(kLabelsDroppedMetric, {{"metric", "egressd_many"}}) == 100);
    CHECK(parsed.value("egressd_many", {{"i", "other"}}) == 1099);  // the last set() wins
}

TEST_CASE("metrics: a wrong number of label values goes to \"other\", counted") {
    Registry registry;
    auto* family = must(registry.counter("egressd_pairs_total", "Pairs.", {"a", "b"}));
    family->labels({"only-one"}).inc();
    family->labels({"x", "y", "z"}).inc();
    const auto parsed = parse_ok(registry.render());
    CHECK(parsed.value("egressd_pairs_total", {{"a", "other"}, {"b", "other"}}) == 2);
    CHECK(parsed.value(kLabelsDroppedMetric, {{"metric", "egressd_pairs_total"}}) == 2);
}

// ---- registration -----------------------------------------------------------------

TEST_CASE("metrics: registration rejects invalid definitions, naming them") {
    Registry registry;
    must(registry.histogram("egressd_h", "A histogram.", {1}));
    must(registry.counter("egressd_c_total", "A counter.", {"a"}));
    must(registry.gauge("egressd_k_sum", "A gauge."));
    struct Case {
        const char* what;
        Result<FamilyBase*> result;
        const char* message;
    };
    const auto erase = [](auto result) -> Result<FamilyBase*> {
        if (!result.ok()) return result.error();
        return static_cast<FamilyBase*>(result.value());
    };
    const Case cases[] = {
        {"dash", erase(registry.gauge("egressd-x", "x")),
         "gauge \"egressd-x\": invalid metric name: must match [a-zA-Z_][a-zA-Z0-9_]* (colons are reserved for "
         "recording rules)"},
        {"colon", erase(registry.gauge("egressd:x", "x")),
         "gauge \"egressd:x\": invalid metric name: must match [a-zA-Z_][a-zA-Z0-9_]* (colons are reserved for "
         "recording rules)"},
        {"digit first", erase(registry.gauge("1x", "x")),
         "gauge \"1x\": invalid metric name: must match [a-zA-Z_][a-zA-Z0-9_]* (colons are reserved for recording "
         "rules)"},
        {"empty", erase(registry.gauge("", "x")),
         "gauge \"\": invalid metric name: must match [a-zA-Z_][a-zA-Z0-9_]* (colons are reserved for recording "
         "rules)"},
        {"reserved", erase(registry.gauge("__x", "x")), "gauge \"__x\": names starting with \"__\" are reserved"},
        {"counter suffix", erase(registry.counter("egressd_decisions", "x")),
         "counter \"egressd_decisions\": a counter's name must end in \"_total\""},
        {"bare suffix", erase(registry.counter("_total", "x")),
         "counter \"_total\": a counter's name must end in \"_total\""},
        {"empty help", erase(registry.gauge("egressd_g", "")), "gauge \"egressd_g\": help text is empty"},
        {"label dash", erase(registry.gauge("egressd_g", "x", {"a-b"})),
         "gauge \"egressd_g\": invalid label name \"a-b\": must match [a-zA-Z_][a-zA-Z0-9_]*"},
        {"label colon", erase(registry.gauge("egressd_g", "x", {"a:b"})),
         "gauge \"egressd_g\": invalid label name \"a:b\": must match [a-zA-Z_][a-zA-Z0-9_]*"},
        {"label empty", erase(registry.gauge("egressd_g", "x", {""})),
         "gauge \"egressd_g\": invalid label name \"\": must match [a-zA-Z_][a-zA-Z0-9_]*"},
        {"label reserved", erase(registry.gauge("egressd_g", "x", {"__name__"})),
         "gauge \"egressd_g\": label name \"__name__\" is reserved (\"__\" prefix)"},
        {"label repeated", erase(registry.gauge("egressd_g", "x", {"a", "b", "a"})),
         "gauge \"egressd_g\": label name \"a\" is repeated"},
        {"le", erase(registry.histogram("egressd_h2", "x", {1}, {"le"})),
         "histogram \"egressd_h2\": label name \"le\" is reserved for histogram buckets"},
        {"bounds order", erase(registry.histogram("egressd_h2", "x", {1, 3, 2})),
         "histogram \"egressd_h2\": bucket bounds must be strictly increasing (2 after 3)"},
        {"bounds repeated", erase(registry.histogram("egressd_h2", "x", {0.5, 0.5})),
         "histogram \"egressd_h2\": bucket bounds must be strictly increasing (0.5 after 0.5)"},
        {"bounds inf", erase(registry.histogram("egressd_h2", "x", {1, std::numeric_limits<double>::infinity()})),
         "histogram \"egressd_h2\": bucket bound #2 is not finite (the +Inf bucket is implicit)"},
        {"bounds nan", erase(registry.histogram("egressd_h2", "x", {std::numeric_limits<double>::quiet_NaN()})),
         "histogram \"egressd_h2\": bucket bound #1 is not finite (the +Inf bucket is implicit)"},
        {"other type", erase(registry.gauge("egressd_h", "A histogram.")),
         "gauge \"egressd_h\": already registered with another definition (histogram, labels [])"},
        {"other labels", erase(registry.counter("egressd_c_total", "A counter.", {"b"})),
         "counter \"egressd_c_total\": already registered with another definition (counter, labels [a])"},
        {"other help", erase(registry.counter("egressd_c_total", "Another counter.", {"a"})),
         "counter \"egressd_c_total\": already registered with another definition (counter, labels [a])"},
        {"other bounds", erase(registry.histogram("egressd_h", "A histogram.", {2})),
         "histogram \"egressd_h\": already registered with another definition (histogram, labels [])"},
        {"series collision", erase(registry.gauge("egressd_h_count", "x")),
         "gauge \"egressd_h_count\": its series egressd_h_count collides with histogram \"egressd_h\""},
        {"series collision, other way", erase(registry.histogram("egressd_k", "x", {1})),
         "histogram \"egressd_k\": its series egressd_k_sum collides with gauge \"egressd_k_sum\""},
        {"the drop counter", erase(registry.gauge(kLabelsDroppedMetric, "x")),
         "gauge \"egressd_metric_labels_dropped_total\": already registered with another definition (counter, labels "
         "[metric])"},
    };
    for (const auto& c : cases) {
        CAPTURE(std::string(c.what));
        REQUIRE_FALSE(c.result.ok());
        CHECK(c.result.error().message == c.message);
        CHECK(c.result.error().errnum == 0);
    }
    // Nothing of the rejected definitions was registered.
    const auto parsed = parse_ok(registry.render());
    CHECK(parsed.families.size() == 4);
}

TEST_CASE("metrics: registering the same definition again returns the same family") {
    Registry registry;
    auto* first = must(registry.counter("egressd_x_total", "X.", {"a"}));
    auto* again = must(registry.counter("egressd_x_total", "X.", {"a"}));
    CHECK(first == again);
    auto* histogram = must(registry.histogram("egressd_y", "Y.", {1, 2}));
    CHECK(histogram == must(registry.histogram("egressd_y", "Y.", {1, 2})));
    CHECK(histogram->bounds() == std::vector<double>{1, 2});
    // Names with a "_total" suffix are fine for gauges, and suffix-like names for counters.
    must(registry.gauge("egressd_seen_total", "Not a counter, but allowed."));
    must(registry.counter("egressd_z_count_total", "Fine."));
}

// ---- concurrency ------------------------------------------------------------------

TEST_CASE("metrics: a writer thread and concurrent renders") {
    Registry registry(Registry::Options{40});
    auto* decisions = must(registry.counter("egressd_w_decisions_total", "Decisions.", {"identity"}));
    auto* kernel = must(registry.counter("egressd_w_kernel_total", "Kernel total."));
    auto* latency = must(registry.histogram("egressd_w_seconds", "Latency.", {0.1, 0.2, 0.4}, {"op"}));
    auto* gauge = must(registry.gauge("egressd_w_gauge", "Gauge.", {"identity"}));
    constexpr int kRenders = 1000;
    std::atomic<bool> stop{false};
    int iterations = 0;

    // The writer runs for as long as the renders do, so that they interleave.
    // Like the agent, it keeps references to children it updates often.
    std::thread writer([&] {
        Histogram& apply = latency->labels({"apply"});
        Histogram& flip = latency->labels({"flip"});
        Counter& kernel_total = kernel->get();
        int i = 0;
        for (; !stop || i < 20000; ++i) {
            const std::string identity = "id" + std::to_string(i % 60);  // beyond the cap of 40: folds
            decisions->labels({identity}).inc();
            (i % 2 ? apply : flip).observe((i % 7) * 0.1);
            apply.observe(0.3);
            gauge->labels({identity}).set(i);
            kernel_total.set_total(i % 5000);  // the source restarts from 0 every 5000 events
            if (i % 1000 == 999) gauge->remove({identity});
        }
        iterations = i;
    });
    std::thread registrar([&] {  // registrations while rendering
        for (int i = 0; i < 50; ++i) CHECK(registry.gauge("egressd_w_late_" + std::to_string(i), "Late.").ok());
    });
    struct Join {  // also when a REQUIRE below throws
        std::atomic<bool>& stop;
        std::thread& a;
        std::thread& b;
        ~Join() {
            stop = true;
            if (a.joinable()) a.join();
            if (b.joinable()) b.join();
        }
    } join{stop, writer, registrar};

    std::map<std::string, double> last;  // counter and bucket series -> value in the previous render
    bool monotonic = true;
    for (int render = 0; render < kRenders; ++render) {
        const auto parsed = parse_ok(registry.render());  // consistent histograms, no duplicates
        for (const auto& family : parsed.families) {
            if (family.type != "counter" && family.type != "histogram") continue;
            for (const auto& sample : family.samples) {
                if (sample.name.ends_with("_sum")) continue;
                std::string key = sample.name;
                for (const auto& label : sample.labels) key += "," + label.name + "=" + label.value;
                const auto [it, inserted] = last.emplace(key, sample.value);
                if (!inserted) {
                    if (sample.value < it->second) monotonic = false;
                    it->second = sample.value;
                }
            }
        }
    }
    stop = true;
    writer.join();
    registrar.join();
    CHECK(monotonic);

    const int n = iterations;
    const auto parsed = parse_ok(registry.render());
    double total = 0;
    for (const auto& sample : parsed.family("egressd_w_decisions_total")->samples) total += sample.value;
    CHECK(total == n);
    CHECK(parsed.family("egressd_w_decisions_total")->samples.size() == 41);
    int folded = 0;  // updates of id40..id59, beyond the cap of 40
    for (int i = 0; i < n; ++i) folded += i % 60 >= 40;
    CHECK(parsed.value(kLabelsDroppedMetric, {{"metric", "egressd_w_decisions_total"}}) == folded);
    CHECK(parsed.value("egressd_w_decisions_total", {{"identity", "other"}}) == folded);
    CHECK(parsed.value("egressd_w_seconds_count", {{"op", "apply"}}) == n / 2 + n);
    // Each run of the source 0..4999 adds 4999; the last run, maybe partial, what it reached.
    CHECK(parsed.value("egressd_w_kernel_total") == (n - 1) / 5000 * 4999 + (n - 1) % 5000);
    CHECK(parsed.family("egressd_w_late_49") != nullptr);
}

// ---- the parser itself --------------------------------------------------------------

TEST_CASE("prometheus parser: the format's own example") {
    const std::string text = R"(# HELP http_requests_total The total number of HTTP requests.
# TYPE http_requests_total counter
http_requests_total{method="post",code="200"} 1027 1395066363000
http_requests_total{method="post",code="400"}    3 1395066363000

# Escaping in label values:
msdos_file_access_time_seconds{path="C:\\DIR\\FILE.TXT",error="Cannot find file:\n\"FILE.TXT\""} 1.458255915e9

# Minimalistic line:
metric_without_timestamp_and_labels 12.47

# A weird metric from before the epoch:
something_weird{problem="division by zero"} +Inf -3982045

# A histogram, which has a pretty complex representation in the text format:
# HELP http_request_duration_seconds A histogram of the request duration.
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{le="0.05"} 24054
http_request_duration_seconds_bucket{le="0.1"} 33444
http_request_duration_seconds_bucket{le="0.2"} 100392
http_request_duration_seconds_bucket{le="0.5"} 129389
http_request_duration_seconds_bucket{le="1"} 133988
http_request_duration_seconds_bucket{le="+Inf"} 144320
http_request_duration_seconds_sum 53423
http_request_duration_seconds_count 144320

# Finally a summary, which has a complex representation, too:
# HELP rpc_duration_seconds A summary of the RPC duration in seconds.
# TYPE rpc_duration_seconds summary
rpc_duration_seconds{quantile="0.01"} 3102
rpc_duration_seconds{quantile="0.05"} 3272
rpc_duration_seconds{quantile="0.5"} 4773
rpc_duration_seconds{quantile="0.9"} 9001
rpc_duration_seconds{quantile="0.99"} 76656
rpc_duration_seconds_sum 1.7560473e+07
rpc_duration_seconds_count 2693
)";
    const auto strict = prom::parse_exposition(text);
    REQUIRE_FALSE(strict.ok());
    CHECK(strict.error().message == "line 3: timestamps are not allowed (1395066363000)");

    const auto parsed = prom::parse_exposition(text, prom::ParseOptions{true});
    if (!parsed.ok()) FAIL(parsed.error().describe());
    REQUIRE(parsed->families.size() == 6);
    CHECK(parsed->families[0].type == "counter");
    CHECK(parsed->families[0].help == "The total number of HTTP requests.");
    CHECK(parsed->value("http_requests_total", {{"code", "400"}, {"method", "post"}}) == 3);
    const auto* msdos = parsed->find("msdos_file_access_time_seconds",
                                     {{"path", "C:\\DIR\\FILE.TXT"}, {"error", "Cannot find file:\n\"FILE.TXT\""}});
    REQUIRE(msdos != nullptr);
    CHECK(msdos->value == 1.458255915e9);
    CHECK(parsed->families[1].type == "untyped");
    CHECK_FALSE(parsed->families[1].typed);
    const auto* weird = parsed->find("something_weird", {{"problem", "division by zero"}});
    REQUIRE(weird != nullptr);
    CHECK(std::isinf(weird->value));
    CHECK(weird->timestamp_ms == -3982045);
    CHECK(parsed->family("http_request_duration_seconds")->samples.size() == 8);
    CHECK(parsed->family("rpc_duration_seconds")->samples.size() == 7);
    CHECK(parsed->sample_count() == 20);
}

TEST_CASE("prometheus parser: accepted variations") {
    struct Case {
        const char* text;
        size_t samples;
    };
    const Case cases[] = {
        {"", 0},
        {"\n\n", 0},
        {"a{b=\"1\",} 1\n", 1},  // trailing comma
        {"a{} 1\n", 1},          // empty braces
        {"a\t1\n", 1},           // a tab separates
        {"  a 1  \n", 1},        // leading and trailing blanks
        {"#HELP a not a directive\na 1\n", 1},
        {"# a comment\n# HELP a\n# TYPE a gauge\na -1.5e-3\n", 1},
        {"# TYPE a gauge\n# HELP a text\na NaN\n", 1},  // TYPE and HELP in any order
        {"a{b=\"\"} 1\nc 2\n", 2},
        {"x:recorded 1\n", 1},  // colons are valid in the format
        {"# TYPE c_total counter\nc_total 0\n", 1},
        {"a .5\nb 5.\nc +1E+3\n", 3},
    };
    for (const auto& c : cases) {
        CAPTURE(std::string(c.text));
        const auto parsed = prom::parse_exposition(c.text);
        if (!parsed.ok()) FAIL(parsed.error().describe());
        CHECK(parsed->sample_count() == c.samples);
    }
    const auto numbers = prom::parse_exposition("a .5\nb 5.\nc +1E+3\n");
    CHECK(numbers->value("a") == 0.5);
    CHECK(numbers->value("b") == 5);
    CHECK(numbers->value("c") == 1000);
}

TEST_CASE("prometheus parser: malformed input is rejected, naming the line") {
    struct Case {
        const char* text;
        const char* message;
    };
    const Case cases[] = {
        // lines and encoding
        {"a 1", "line 1: the last line does not end with a newline"},
        {"a 1\nb 2", "line 2: the last line does not end with a newline"},
        {"a 1\r\n", "line 1: carriage return in line"},
        {"a{b=\"\xff\"} 1\n", "line 1: invalid UTF-8"},
        // HELP and TYPE
        {"# TYPE\n", "line 1: TYPE line without a metric name"},
        {"# TYPE a\n", "line 1: TYPE line for a without a type"},
        {"# TYPE a foo\n", "line 1: unknown type \"foo\" for a"},
        {"# TYPE a Counter\n", "line 1: unknown type \"Counter\" for a"},
        {"# TYPE a counter extra\n", "line 1: unexpected text after the type of a"},
        {"# TYPE 1a counter\n", "line 1: invalid metric name \"1a\" in TYPE"},
        {"# HELP a-b x\n", "line 1: invalid metric name \"a-b\" in HELP"},
        {"# TYPE a counter\n# TYPE a counter\n", "line 2: second TYPE line for a"},
        {"# HELP a x\n# HELP a y\n", "line 2: second HELP line for a"},
        {"a 1\n# TYPE a gauge\n", "line 2: TYPE line for a after its samples"},
        {"a 1\n# HELP a late\n", "line 2: HELP line for a after its samples"},
        {"# HELP a bad \\t escape\n", "line 1: invalid escape \"\\t\" in HELP text"},
        {"# HELP a trailing \\\n", "line 1: HELP text ends with a lone backslash"},
        // grouping and duplicates
        {"# TYPE a gauge\na 1\nb 1\na{x=\"1\"} 2\n",
         "line 4: the lines of a are not in one group (it appeared before, on line 1)"},
        {"a 1\nb 1\n# HELP a late\n", "line 3: the lines of a are not in one group (it appeared before, on line 1)"},
        {"# TYPE a gauge\na 1\na 2\n", "line 3: duplicate series a (first on line 2)"},
        {"a{x=\"1\",y=\"2\"} 1\na{y=\"2\",x=\"1\"} 1\n",
         "line 2: duplicate series a{y=\"2\",x=\"1\"} (first on line 1)"},
        {"a 1\na{x=\"\"} 1\n", "line 2: duplicate series a{x=\"\"} (first on line 1)"},
        // sample syntax
        {"-a 1\n", "line 1: expected a metric name at the start of the line, found \"-a\""},
        {"a-b 1\n", "line 1: unexpected character '-' after a"},
        {"a\n", "line 1: sample a has no value"},
        {"a{b=\"1\"}\n", "line 1: sample a has no value"},
        {"a {b=\"1\"} 1\n", "line 1: blank between the metric name a and \"{\""},
        {"a{ b=\"1\"} 1\n", "line 1: expected a label name in the labels of a, found ' '"},
        {"a{b=\"1\" } 1\n", "line 1: expected \",\" or \"}\" after the value of label \"b\""},
        {"a{b=\"1\" c=\"2\"} 1\n", "line 1: expected \",\" or \"}\" after the value of label \"b\""},
        {"a{b=\"1\",,c=\"2\"} 1\n", "line 1: expected a label name in the labels of a, found ','"},
        {"a{b} 1\n", "line 1: expected \"=\" after label name \"b\""},
        {"a{b=c} 1\n", "line 1: expected '\"' to open the value of label \"b\""},
        {"a{b=\"c} 1\n", "line 1: unterminated value of label \"b\""},
        {"a{b=\"c\"\n", "line 1: expected \",\" or \"}\" after the value of label \"b\""},
        {"a{b=\"1\",\n", "line 1: unterminated label set of a"},
        {"a{b=\"c\\t\"} 1\n", "line 1: invalid escape \"\\t\" in the value of label \"b\""},
        {"a{__b=\"1\"} 1\n", "line 1: label name \"__b\" is reserved"},
        {"a{b=\"1\",b=\"2\"} 1\n", "line 1: label \"b\" is repeated"},
        // values and timestamps
        {"a one\n", "line 1: invalid value \"one\" for a"},
        {"a inf\n", "line 1: invalid value \"inf\" for a"},
        {"a Inf\n", "line 1: invalid value \"Inf\" for a"},
        {"a nan\n", "line 1: invalid value \"nan\" for a"},
        {"a 0x10\n", "line 1: invalid value \"0x10\" for a"},
        {"a 1e999\n", "line 1: invalid value \"1e999\" for a"},
        {"a 1e\n", "line 1: invalid value \"1e\" for a"},
        {"a 1_000\n", "line 1: invalid value \"1_000\" for a"},
        {"a 1 1700000000000\n", "line 1: timestamps are not allowed (1700000000000)"},
        // counters
        {"# TYPE c_total counter\nc_total -1\n", "line 2: counter c_total has a negative or NaN value"},
        {"# TYPE c_total counter\nc_total NaN\n", "line 2: counter c_total has a negative or NaN value"},
        // histograms
        {"# TYPE h histogram\nh 1\n", "line 2: sample h of histogram h: expected h_bucket, h_sum or h_count"},
        {"# TYPE h histogram\nh_bucket 1\n", "line 2: h_bucket has no \"le\" label"},
        {"# TYPE h histogram\nh_bucket{le=\"x\"} 1\n", "line 2: invalid le \"x\" in h_bucket{le=\"x\"}"},
        {"# TYPE h histogram\nh_sum{le=\"1\"} 1\n", "line 2: h_sum{le=\"1\"} must not have an \"le\" label"},
        {"# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1.5\n",
         "line 2: h_bucket{le=\"+Inf\"} value 1.5 is not a non-negative integer"},
        {"# TYPE h histogram\nh_count -1\n", "line 2: h_count value -1 is not a non-negative integer"},
        {"# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 3\n",
         "line 5: histogram h: _count 3 differs from the +Inf bucket (2)"},
        {"# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",
         "line 2: histogram h: the last bucket is le=\"1\", not le=\"+Inf\""},
        {"# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"2\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count "
         "2\n",
         "line 3: histogram h: bucket le=\"2\" counts 1, less than le=\"1\" (2)"},
        {"# TYPE h histogram\nh_bucket{le=\"2\"} 1\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count "
         "1\n",
         "line 3: histogram h: bucket le=\"1\" after le=\"2\" (le must increase)"},
        {"# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"1.0\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count "
         "1\n",
         "line 3: histogram h: bucket le=\"1.0\" after le=\"1\" (le must increase)"},
        {"# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\n", "line 2: histogram h has no _count"},
        {"# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n", "line 2: histogram h has no _sum"},
        {"# TYPE h histogram\nh_sum 1\nh_count 1\n", "line 2: histogram h has no buckets"},
        {"# TYPE h histogram\nh_bucket{x=\"1\",le=\"+Inf\"} 1\nh_sum{x=\"1\"} 1\nh_count{x=\"1\"} 1\n"
         "h_bucket{x=\"2\",le=\"+Inf\"} 1\nh_sum{x=\"2\"} 1\nh_count{x=\"2\"} 2\n",
         "line 7: histogram h{x=\"2\"}: _count 2 differs from the +Inf bucket (1)"},
        {"# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\nx 1\nh_count{a=\"b\"} 1\n",
         "line 6: the lines of h are not in one group (it appeared before, on line 1)"},
        // summaries
        {"# TYPE s summary\ns 1\n", "line 2: s has no \"quantile\" label"},
        {"# TYPE s summary\ns{quantile=\"2\"} 1\n", "line 2: invalid quantile \"2\" in s{quantile=\"2\"}"},
        {"# TYPE s summary\ns{quantile=\"0.5\"} 1\ns_sum 1\n", "line 2: summary s lacks _sum or _count"},
    };
    for (const auto& c : cases) {
        CAPTURE(std::string(c.text));
        const auto parsed = prom::parse_exposition(c.text);
        REQUIRE_FALSE(parsed.ok());
        CHECK(parsed.error().message == c.message);
    }
}

TEST_CASE("prometheus parser: timestamps when allowed") {
    const prom::ParseOptions allow{true};
    const auto parsed = prom::parse_exposition("a 1 -5\nb 2 1700000000000\n", allow);
    if (!parsed.ok()) FAIL(parsed.error().describe());
    CHECK(parsed->find("a")->timestamp_ms == -5);
    CHECK(parsed->find("b")->timestamp_ms == 1700000000000);
    CHECK(prom::parse_exposition("a 1 1.5\n", allow).error().message == "line 1: invalid timestamp \"1.5\"");
    CHECK(prom::parse_exposition("a 1 2 3\n", allow).error().message == "line 1: unexpected text after the timestamp");
}

TEST_CASE("metrics: label values and help with invalid UTF-8 render as valid UTF-8") {
    // A lone 0xF7 and a sequence cut short each become one U+FFFD.
    Registry registry;
    auto* bytes = must(registry.counter("egressd_egress_bytes_total", "Bytes \xF7 by rule.", {"rule"}));
    bytes->labels({"curl/bad\xF7name\xE6\x97"}).inc(5);
    const auto parsed = parse_ok(registry.render());  // the strict parser rejects invalid UTF-8
    const auto* sample = parsed.find("egressd_egress_bytes_total", {{"rule", "curl/bad\xEF\xBF\xBDname\xEF\xBF\xBD"}});
    REQUIRE(sample != nullptr);
    CHECK(sample->value == 5);
}
