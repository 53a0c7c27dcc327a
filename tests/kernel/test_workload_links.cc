// Kubernetes mode's attachment: the programs on each enforced pod's cgroup,
// one pinned set of links per pod, and nothing on the pods' parent. A pod
// without links, and a process in the parent, are never decided.
#include <doctest/doctest.h>

#include <filesystem>

#include "core/image.h"
#include "enforcer.h"
#include "kernel/datapath.h"
#include "kernel/pins.h"
#include "testenv.h"

using namespace egressd;
using namespace egressd::testenv;
using namespace egressd::ktest;

namespace {

Probe external_tcp() { return Probe{TestNetwork::kExternal4, 80, Proto::tcp, Op::connect}; }

CgroupTarget target_of(const TestCgroup& cg) { return CgroupTarget{cg.path(), cg.id()}; }

size_t open_fds() {
    size_t n = 0;
    for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) n += entry.path().empty() ? 0 : 1;
    return n;
}

void require_all(const Result<std::vector<AttachReport>>& reports, const char* action) {
    REQUIRE_MESSAGE(reports.ok(), (reports.ok() ? "" : reports.error().describe()));
    REQUIRE(reports->size() == kLinkNames.size());
    for (const auto& report : *reports) CHECK_MESSAGE(report.action == action, report.hook);
}

}  // namespace

TEST_CASE("kernel: per-pod links enforce on that pod only, survive a restart, and go with the pod") {
    EGRESSD_REQUIRE_KERNEL_ENV();
    EnforcedEnv env;  // env.cg plays the pods' parent (kubepods)
    TestCgroup pod_a = env.cg.child("pod-a");
    TestCgroup pod_b = env.cg.child("pod-b");
    Enforcer enforcer(env.cg);
    enforcer.publish(test_agent(env.cg), mesh_with_egress(false));
    REQUIRE(enforcer.datapath().pin_maps_once().ok());
    require_all(enforcer.datapath().attach_workload("uid-a", target_of(pod_a)), "attached");

    CHECK(pinned_workload_keys(enforcer.pin_dir()) == std::vector<std::string>{"uid-a"});
    for (const auto& link : read_pinned_links_in(workload_links_dir(enforcer.pin_dir(), "uid-a"))) {
        CHECK_MESSAGE(link.pinned, link.hook);
        CHECK(link.cgroup_id == pod_a.id());
    }
    CHECK(run_probe(pod_a, env.net, external_tcp()).error == EPERM);
    CHECK(run_probe(pod_b, env.net, external_tcp()).error == 0);   // no program on pod B
    CHECK(run_probe(env.cg, env.net, external_tcp()).error == 0);  // nor on the parent

    SUBCASE("a restarted agent adopts the pod's links: no instant without them") {
        auto restarted = Datapath::load({enforcer.pin_dir(), Capacities{}});
        REQUIRE_MESSAGE(restarted.ok(), (restarted.ok() ? "" : restarted.error().describe()));
        CHECK((*restarted)->adopted_maps());
        require_all((*restarted)->attach_workload("uid-a", target_of(pod_a)), "adopted");
        CHECK(run_probe(pod_a, env.net, external_tcp()).error == EPERM);
    }
    SUBCASE("detaching a pod ends its enforcement and removes its pins") {
        const size_t fds_attached = open_fds();
        REQUIRE(enforcer.datapath().detach_workload("uid-a").ok());
        CHECK(open_fds() == fds_attached - kLinkNames.size());  // the links' descriptors are closed
        CHECK(pinned_workload_keys(enforcer.pin_dir()).empty());
        CHECK_FALSE(std::filesystem::exists(workload_links_dir(enforcer.pin_dir(), "uid-a")));
        CHECK(run_probe(pod_a, env.net, external_tcp()).error == 0);
    }
    SUBCASE("a pod whose cgroup is already gone is detached without an error") {
        require_all(enforcer.datapath().attach_workload("uid-b", target_of(pod_b)), "attached");
        { TestCgroup gone = std::move(pod_b); }  // removes the cgroup, as the kubelet does
        REQUIRE(enforcer.datapath().detach_workload("uid-b").ok());
        CHECK(pinned_workload_keys(enforcer.pin_dir()) == std::vector<std::string>{"uid-a"});
    }
}
