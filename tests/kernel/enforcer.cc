// Shared fixture of the kernel integration tests: see enforcer.h.
#include "enforcer.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "kernel/mounts.h"

namespace egressd::ktest {

using namespace egressd::testenv;

Cidr cidr(const char* text) { return Cidr::parse(text).value(); }

std::vector<Cidr> padded(std::vector<Cidr> list, size_t count) {
    for (size_t i = 0; i < count; ++i) list.push_back(cidr(fmt::format("192.0.2.{}/32", i + 1).c_str()));
    return list;
}

namespace {

constexpr const char* kPinPrefix = "egressd-test-";

// Removes /sys/fs/bpf/egressd-test-<pid> of test processes that are gone
// (killed before their Enforcer could clean up), as TestCgroup and
// TestNetwork sweep their own leftovers.
void sweep_stale_pins() noexcept {
    try {
        std::error_code ec;
        for (const auto& entry : std::filesystem::directory_iterator("/sys/fs/bpf", ec)) {
            const std::string name = entry.path().filename().string();
            if (!name.starts_with(kPinPrefix)) continue;
            const std::string pid_text = name.substr(std::strlen(kPinPrefix));
            if (pid_text.empty() || pid_text.size() > 9 ||
                !std::all_of(pid_text.begin(), pid_text.end(), [](char c) { return c >= '0' && c <= '9'; }))
                continue;
            const pid_t pid = static_cast<pid_t>(std::stol(pid_text));
            if (pid == ::getpid() || ::kill(pid, 0) == 0 || errno != ESRCH) continue;
            std::vector<std::string> removed;
            (void)cleanup_pins(entry.path(), removed);
        }
    } catch (...) {
    }
}

}  // namespace

Enforcer::Enforcer(const TestCgroup& cgroup, const Capacities& capacities, bool track_flows)
    : pin_dir_(fmt::format("/sys/fs/bpf/{}{}", kPinPrefix, ::getpid())) {
    sweep_stale_pins();
    std::vector<std::string> ignored;
    (void)cleanup_pins(pin_dir_, ignored);
    REQUIRE_MESSAGE(ensure_bpffs_dir(pin_dir_).ok(), "bpffs unavailable for " << pin_dir_);
    auto dp = Datapath::load({pin_dir_, capacities, track_flows});
    REQUIRE_MESSAGE(dp.ok(), (dp.ok() ? "" : dp.error().describe()));
    datapath_ = std::move(*dp);
    target_ = CgroupTarget{cgroup.path(), cgroup.id()};
}

Enforcer::~Enforcer() {
    datapath_.reset();
    std::vector<std::string> removed;
    (void)cleanup_pins(pin_dir_, removed);
}

MapImage Enforcer::publish(const AgentConfig& agent, const MeshConfig& mesh, const PolicyInputs& policy) {
    auto image = build_image(agent, mesh, generation_ + 1, policy);
    REQUIRE_MESSAGE(image.ok(), (image.ok() ? "" : image.error().describe()));
    return publish_image(std::move(*image));
}

MapImage Enforcer::publish_image(MapImage image) {
    image.generation = ++generation_;
    auto published = datapath_->publish(image);
    REQUIRE_MESSAGE(published.ok(), (published.ok() ? "" : published.error().describe()));
    return image;
}

void Enforcer::set_identities(const std::map<uint32_t, IdentityName>& names,
                              const std::map<uint64_t, uint32_t>& workloads) {
    auto written = datapath_->set_identities(names, workloads);
    REQUIRE_MESSAGE(written.ok(), (written.ok() ? "" : written.error().describe()));
}

void Enforcer::attach() {
    auto attached = datapath_->attach(target_);
    REQUIRE_MESSAGE(attached.ok(), (attached.ok() ? "" : attached.error().describe()));
}

std::vector<uint64_t> Enforcer::counters() const {
    auto c = datapath_->maps().read_counters();
    REQUIRE(c.ok());
    return *c;
}

bool is_v6_socket(const Probe& p) {
    if (p.v4_mapped) return true;
    if (p.family != 0) return p.family == AF_INET6;
    return p.address.find(':') != std::string::npos;
}

std::vector<egressd_hook> hooks_of(const Probe& p, bool allowed) {
    const bool v6 = is_v6_socket(p);
    if (p.op == Op::sendmsg) return {v6 && !p.v4_mapped ? EGRESSD_HOOK_SENDMSG6 : EGRESSD_HOOK_SENDMSG4};
    std::vector<egressd_hook> hooks{v6 ? EGRESSD_HOOK_CONNECT6 : EGRESSD_HOOK_CONNECT4};
    if (p.proto == Proto::udp && p.v4_mapped && allowed) hooks.push_back(EGRESSD_HOOK_SENDMSG4);
    return hooks;
}

Query query_of(const Probe& p, uint32_t identity) {
    Query q;
    q.dst = IpAddress::parse(p.address).value();
    q.port = p.port;
    q.proto = p.proto == Proto::tcp ? IPPROTO_TCP : IPPROTO_UDP;
    q.uid = p.uid.value_or(0);
    q.identity = identity;
    return q;
}

void check_counter_deltas(const std::vector<uint64_t>& before, const std::vector<uint64_t>& after,
                          std::map<uint32_t, uint64_t> expected, const std::string& what) {
    REQUIRE(before.size() == static_cast<size_t>(EGRESSD_COUNTER_SLOTS));
    REQUIRE(after.size() == static_cast<size_t>(EGRESSD_COUNTER_SLOTS));
    for (uint32_t i = 0; i < EGRESSD_COUNTER_SLOTS; ++i) {
        const uint64_t delta = after[i] - before[i];
        const uint64_t want = expected.count(i) ? expected[i] : 0;
        CHECK_MESSAGE(delta == want, what << ": kernel counted " << delta << " decisions for "
                                          << reason_name(static_cast<egressd_reason>(i / EGRESSD_HOOK_MAX)) << "/"
                                          << hook_name(static_cast<egressd_hook>(i % EGRESSD_HOOK_MAX)) << ", expected "
                                          << want);
    }
}

void check_cases(Enforcer& enforcer, const MapImage* image, const TestCgroup& cg, const TestNetwork& net,
                 const std::vector<Case>& cases, uint32_t identity) {
    std::vector<Probe> probes;
    std::map<uint32_t, uint64_t> expected_counts;
    for (const auto& c : cases) {
        probes.push_back(c.probe);
        for (egressd_hook hook : hooks_of(c.probe, allows(c.reason))) expected_counts[counter_index(c.reason, hook)]++;
        // The reference model must name the same row.
        const Decision model = decide(image, query_of(c.probe, identity));
        CHECK_MESSAGE(model.reason == c.reason, describe(c.probe) << " from " << cg.path() << " (identity " << identity
                                                                  << "): model says " << reason_name(model.reason)
                                                                  << ", expected " << reason_name(c.reason));
    }
    const auto before = enforcer.counters();
    const auto results = run_probes(cg, net, probes);
    const auto after = enforcer.counters();
    REQUIRE(results.size() == cases.size());
    for (size_t i = 0; i < cases.size(); ++i) {
        const int expected = allows(cases[i].reason) ? 0 : EPERM;
        CHECK_MESSAGE(results[i].error == expected,
                      describe(cases[i].probe)
                          << " from " << cg.path() << " (identity " << identity << "): got "
                          << std::string(results[i].error ? strerror(results[i].error) : "allowed") << " ("
                          << results[i].detail << "), expected " << std::string(expected ? "EPERM" : "allowed")
                          << " by " << reason_name(cases[i].reason));
    }
    // Each row x hook the kernel counted is exactly what we expected.
    check_counter_deltas(before, after, std::move(expected_counts), "probes from " + cg.path());
}

AgentConfig test_agent(const TestCgroup& cg) {
    AgentConfig a;
    a.cgroup = cg.path();
    a.mesh_cidrs = {cidr("198.18.0.0/16"), cidr("2001:db8:2::/48")};
    a.sidecar_uid = 1500;
    return a;
}

MeshConfig mesh_with_egress(bool enable) {
    MeshConfig m;
    m.api_version = "config.flomesh.io/v1alpha3";
    m.name = "test";
    m.enable_egress = enable;
    return m;
}

std::vector<Probe> every_way(const std::string& address, uint16_t tcp_port, uint16_t udp_port) {
    std::vector<Probe> out;
    const bool v4 = address.find(':') == std::string::npos;
    for (bool mapped : {false, true}) {
        if (mapped && !v4) continue;
        out.push_back(
            {.address = address, .port = tcp_port, .proto = Proto::tcp, .op = Op::connect, .v4_mapped = mapped});
        out.push_back(
            {.address = address, .port = udp_port, .proto = Proto::udp, .op = Op::connect, .v4_mapped = mapped});
        out.push_back(
            {.address = address, .port = udp_port, .proto = Proto::udp, .op = Op::sendmsg, .v4_mapped = mapped});
    }
    return out;
}

void add(std::vector<Case>& cases, const std::vector<Probe>& probes, egressd_reason reason) {
    for (const auto& p : probes) cases.push_back({p, reason});
}

}  // namespace egressd::ktest
