// Shared fixture of the kernel integration tests: the datapath on a private
// pin directory and a test cgroup, and the three-way check (expected row, the
// C++ reference model, the kernel's verdict and counters) of a batch of
// probes run from one cgroup.
#ifndef EGRESSD_TESTS_KERNEL_ENFORCER_H
#define EGRESSD_TESTS_KERNEL_ENFORCER_H

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/agent_config.h"
#include "core/decision.h"
#include "core/identity.h"
#include "core/image.h"
#include "core/meshconfig.h"
#include "kernel/datapath.h"
#include "kernel/event_reader.h"
#include "kernel/pins.h"
#include "testenv.h"

namespace egressd::ktest {

Cidr cidr(const char* text);
// `list` with `count` /32s of 192.0.2.0/24 (TEST-NET-1, never contacted)
// after it: enough pushes a CIDR table past what the slot's config carries.
std::vector<Cidr> padded(std::vector<Cidr> list, size_t count);

// The datapath on a private pin directory (/sys/fs/bpf/egressd-test-<pid>)
// and the test's cgroup. Removes every link and pin it made, also when a test
// fails. Generation numbers increase with every publish.
class Enforcer {
public:
    explicit Enforcer(const testenv::TestCgroup& cgroup, const Capacities& capacities = Capacities{},
                      bool track_flows = true);
    ~Enforcer();
    Enforcer(const Enforcer&) = delete;
    Enforcer& operator=(const Enforcer&) = delete;

    // Builds (REQUIREs success) and publishes the next generation.
    MapImage publish(const AgentConfig& agent, const MeshConfig& mesh, const PolicyInputs& policy = {});
    // Publishes a prebuilt image as the next generation (its generation number
    // is replaced); returns what was published.
    MapImage publish_image(MapImage image);
    // The generation number the next publish will use.
    uint64_t next_generation() const { return generation_ + 1; }
    // Identity names and registered workload cgroups (REQUIREs success).
    void set_identities(const std::map<uint32_t, IdentityName>& names, const std::map<uint64_t, uint32_t>& workloads);
    void attach();
    std::vector<uint64_t> counters() const;
    const std::filesystem::path& pin_dir() const { return pin_dir_; }
    Datapath& datapath() { return *datapath_; }

private:
    std::filesystem::path pin_dir_;
    std::unique_ptr<Datapath> datapath_;
    CgroupTarget target_;
    uint64_t generation_ = 0;
};

// A probe and the row expected to decide it.
struct Case {
    testenv::Probe probe;
    egressd_reason reason;
};

bool is_v6_socket(const testenv::Probe& p);

// The hooks the kernel runs for a probe. udpv6_sendmsg() hands a datagram to
// a v4-mapped destination to udp_sendmsg() with an explicit IPv4 address, so
// sendmsg4 decides it, and does so again for every datagram of an AF_INET6
// UDP socket connected to a v4-mapped address (a UDP connect probe always
// sends one datagram once connected, whether or not it waits for the echo).
std::vector<egressd_hook> hooks_of(const testenv::Probe& p, bool allowed);

inline bool allows(egressd_reason reason) {
    return reason != EGRESSD_REASON_DENY && reason != EGRESSD_REASON_NO_CONFIG;
}

// The reference model's query for a probe made by a process of `identity`.
Query query_of(const testenv::Probe& p, uint32_t identity = 0);

// Counter index of (reason, hook) in counters_v2.
inline uint32_t counter_index(egressd_reason reason, egressd_hook hook) {
    return static_cast<uint32_t>(reason) * EGRESSD_HOOK_MAX + static_cast<uint32_t>(hook);
}

// Runs the cases from `cg` (whose processes have workload identity
// `identity` as the kernel sees it) and checks verdicts, the model and the
// kernel's counters.
void check_cases(Enforcer& enforcer, const MapImage* image, const testenv::TestCgroup& cg,
                 const testenv::TestNetwork& net, const std::vector<Case>& cases, uint32_t identity = 0);

// Compares the kernel's counter deltas with the expected (reason, hook)
// counts; `what` names the batch in messages.
void check_counter_deltas(const std::vector<uint64_t>& before, const std::vector<uint64_t>& after,
                          std::map<uint32_t, uint64_t> expected, const std::string& what);

AgentConfig test_agent(const testenv::TestCgroup& cg);
MeshConfig mesh_with_egress(bool enable);

// Every way a process reaches an address: TCP connect, UDP connect, UDP
// sendmsg; over the natural family, and for IPv4 also over an AF_INET6
// socket with the IPv4-mapped address.
std::vector<testenv::Probe> every_way(const std::string& address, uint16_t tcp_port, uint16_t udp_port);

void add(std::vector<Case>& cases, const std::vector<testenv::Probe>& probes, egressd_reason reason);

}  // namespace egressd::ktest

#endif  // EGRESSD_TESTS_KERNEL_ENFORCER_H
