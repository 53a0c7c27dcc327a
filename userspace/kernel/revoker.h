// Revocation, the kernel edge: socket iterators (bpf/revoke.bpf.c) list the
// TCP and connected UDP sockets of one network namespace, and destroy those
// the caller names (bpf_sock_destroy, kernel >= 6.5). A socket iterator
// sees the namespace of the task that creates it, so each sweep runs on a
// thread of its own that enters the namespace first.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <memory>
#include <vector>

#include "common/result.h"
#include "core/image.h"
#include "egressd_abi.h"
#include "core/revocation.h"
#include "kernel/cgroup.h"
#include "kernel/libbpf_owners.h"

namespace egressd {

class Revoker {
public:
    // Loads the iterators. Fails on kernels without socket iterators or
    // bpf_sock_destroy, or where tracing programs may not load.
    static Result<std::unique_ptr<Revoker>> load();

    struct Sweep {
        size_t sockets = 0;                   // listed
        std::vector<OpenSocket> destroyed;    // named and destroyed
    };
    // Given a namespace's sockets, the cookies to destroy.
    using Chooser = std::function<std::vector<uint64_t>(const std::vector<OpenSocket>&)>;

    // One namespace: `netns` is a /proc/PID/ns/net path (empty: this
    // process's own namespace). Lists, asks `choose`, destroys.
    Result<Sweep> sweep(const std::filesystem::path& netns, const Chooser& choose);

    // The counters of every open socket of the processes in and below
    // `roots`, by cookie, as of now, namespace by namespace: what egressctl
    // flows and /metrics show of open connections. Namespaces that could
    // not be read are named in `problems`.
    struct OpenBytes {
        std::map<uint64_t, SocketBytes> by_cookie;
        std::vector<std::string> problems;
    };
    OpenBytes open_bytes(const std::vector<CgroupTarget>& roots, const std::filesystem::path& mount);

    struct Pass {
        std::vector<Revocation> revoked;  // destroyed
        size_t sockets = 0;               // looked at, in every namespace
        size_t namespaces = 0;
        std::vector<std::string> problems;  // namespaces that could not be swept
    };
    // Destroys every open connection of the processes in and below `roots`
    // that `image` denies (core/revocation.h decides), namespace by
    // namespace. `workloads` are the registered workload cgroups; `learned`
    // the addresses learned from DNS answers (dns_learned_v1).
    Pass revoke(const MapImage& image, const std::vector<CgroupTarget>& roots, const std::filesystem::path& mount,
                const std::map<uint64_t, uint32_t>& workloads,
                const std::vector<std::pair<egressd_dns_learned_key, egressd_dns_learned>>& learned);

private:
    Revoker() = default;
    Result<Sweep> sweep_here(const Chooser& choose);

    RevokeSkeleton skel_;
    OwnedLink list_tcp_, list_udp_, destroy_tcp_, destroy_udp_;
};

}  // namespace egressd
