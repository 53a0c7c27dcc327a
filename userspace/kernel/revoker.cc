#include "kernel/revoker.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <unistd.h>

#include <bpf/bpf.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <thread>

#include "common/fd.h"
#include "egressd_abi.h"

namespace egressd {

namespace {

Error libbpf_failure(const std::string& what, int err) { return Error{err < 0 ? -err : err, what}; }

// Everything an iterator writes, until its end.
Result<std::string> read_iterator(bpf_link* link) {
    UniqueFd fd(bpf_iter_create(bpf_link__fd(link)));
    if (!fd.valid()) return system_error("creating a socket iterator");
    std::string out;
    char buffer[16384];
    for (;;) {
        const ssize_t n = ::read(fd.get(), buffer, sizeof(buffer));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return system_error("reading a socket iterator");
        if (n == 0) return out;
        out.append(buffer, static_cast<size_t>(n));
    }
}

OpenSocket socket_of(const egressd_socket_record& r) {
    OpenSocket s;
    s.cookie = r.cookie;
    s.cgroup_id = r.cgroup_id;
    std::memcpy(s.peer.bytes.data(), r.addr, sizeof(r.addr));
    s.port = r.port;
    s.local_port = r.local_port;
    s.proto = r.proto;
    s.uid = r.uid;
    s.listening = r.proto == IPPROTO_TCP && r.state == TCP_LISTEN;
    s.bytes_sent = r.bytes_sent;
    s.bytes_received = r.bytes_received;
    return s;
}

}  // namespace

Result<std::unique_ptr<Revoker>> Revoker::load() {
    std::unique_ptr<Revoker> revoker(new Revoker());
    revoker->skel_.reset(revoke_bpf__open());
    if (!revoker->skel_) return system_error("opening the revocation programs");
    if (int err = revoke_bpf__load(revoker->skel_.get()); err != 0)
        return libbpf_failure("loading the revocation programs (socket iterators, bpf_sock_destroy: kernel >= 6.5)",
                              err);
    auto attach = [](bpf_program* program, OwnedLink& link) -> Status {
        link.reset(bpf_program__attach_iter(program, nullptr));
        if (!link) return system_error(std::string("attaching iterator ") + bpf_program__name(program));
        return {};
    };
    auto& progs = revoker->skel_->progs;
    for (auto [program, link] : {std::pair{progs.egressd_list_tcp, &revoker->list_tcp_},
                                 std::pair{progs.egressd_list_udp, &revoker->list_udp_},
                                 std::pair{progs.egressd_destroy_tcp, &revoker->destroy_tcp_},
                                 std::pair{progs.egressd_destroy_udp, &revoker->destroy_udp_}}) {
        if (auto attached = attach(program, *link); !attached) return attached.error();
    }
    return revoker;
}

Result<Revoker::Sweep> Revoker::sweep(const std::filesystem::path& netns, const Chooser& choose) {
    if (netns.empty()) return sweep_here(choose);
    Result<Sweep> result = Error{0, ""};
    std::thread worker([&] {
        UniqueFd ns(::open(netns.c_str(), O_RDONLY | O_CLOEXEC));
        if (!ns.valid()) {
            result = system_error("opening " + netns.string());
            return;
        }
        // This thread only: the rest of the agent stays in its namespace.
        if (::setns(ns.get(), CLONE_NEWNET) != 0) {
            result = system_error("entering network namespace " + netns.string());
            return;
        }
        result = sweep_here(choose);
    });
    worker.join();
    return result;
}

Result<Revoker::Sweep> Revoker::sweep_here(const Chooser& choose) {
    Sweep sweep;
    std::vector<OpenSocket> sockets;
    for (bpf_link* link : {list_tcp_.get(), list_udp_.get()}) {
        auto bytes = read_iterator(link);
        if (!bytes) return bytes.error();
        for (size_t at = 0; at + sizeof(egressd_socket_record) <= bytes->size(); at += sizeof(egressd_socket_record)) {
            egressd_socket_record record;
            std::memcpy(&record, bytes->data() + at, sizeof(record));
            sockets.push_back(socket_of(record));
        }
    }
    sweep.sockets = sockets.size();
    const std::vector<uint64_t> doomed = choose(sockets);
    if (doomed.empty()) return sweep;

    const int cookies = bpf_map__fd(skel_->maps.revoke_cookies);
    const uint8_t one = 1;
    size_t named = 0;
    for (uint64_t cookie : doomed) {
        if (named == EGRESSD_REVOKE_BATCH) break;  // the next pass takes the rest
        if (bpf_map_update_elem(cookies, &cookie, &one, BPF_ANY) != 0) return system_error("naming a socket to revoke");
        ++named;
    }
    std::map<uint64_t, const OpenSocket*> by_cookie;
    for (const OpenSocket& s : sockets) by_cookie[s.cookie] = &s;
    Status status;
    for (bpf_link* link : {destroy_tcp_.get(), destroy_udp_.get()}) {
        auto bytes = read_iterator(link);
        if (!bytes) {
            status = bytes.error();
            break;
        }
        for (size_t at = 0; at + sizeof(uint64_t) <= bytes->size(); at += sizeof(uint64_t)) {
            uint64_t cookie;
            std::memcpy(&cookie, bytes->data() + at, sizeof(cookie));
            if (auto it = by_cookie.find(cookie); it != by_cookie.end()) sweep.destroyed.push_back(*it->second);
        }
    }
    for (size_t i = 0; i < named; ++i) bpf_map_delete_elem(cookies, &doomed[i]);
    if (!status) return status.error();
    return sweep;
}

Revoker::OpenBytes Revoker::open_bytes(const std::vector<CgroupTarget>& roots, const std::filesystem::path& mount) {
    OpenBytes out;
    for (const std::filesystem::path& netns : walk_enforced(roots, mount).namespaces) {
        auto swept = sweep(netns, [&](const std::vector<OpenSocket>& sockets) {
            for (const OpenSocket& s : sockets) out.by_cookie[s.cookie] = {s.bytes_sent, s.bytes_received};
            return std::vector<uint64_t>{};
        });
        // The process may have exited between the walk and the sweep.
        if (!swept && swept.error().errnum != ENOENT) out.problems.push_back(swept.error().describe());
    }
    return out;
}

Revoker::Pass Revoker::revoke(const MapImage& image, const std::vector<CgroupTarget>& roots,
                              const std::filesystem::path& mount, const std::map<uint64_t, uint32_t>& workloads,
                              const std::vector<std::pair<egressd_dns_learned_key, egressd_dns_learned>>& learned) {
    Pass pass;
    const EnforcedTree tree = walk_enforced(roots, mount);
    std::map<std::pair<uint32_t, IpAddress>, uint32_t> learned_hosts;
    for (const auto& [key, entry] : learned) {
        IpAddress address;
        std::memcpy(address.bytes.data(), entry.addr, sizeof(entry.addr));
        if (entry.host != 0) learned_hosts[{key.identity, address}] = entry.host;
    }
    RevocationContext context;
    context.image = &image;
    context.identity_of = [&](uint64_t cgroup) {
        return derived_identity(cgroup, tree.ancestry, workloads, image.cgroup_level);
    };
    context.learned_host = [&](uint32_t identity, const IpAddress& peer) -> uint32_t {
        auto it = learned_hosts.find({identity, peer});
        return it == learned_hosts.end() ? 0 : it->second;
    };
    for (const std::filesystem::path& netns : tree.namespaces) {
        std::map<uint64_t, Revocation> chosen;
        auto swept = sweep(netns, [&](const std::vector<OpenSocket>& sockets) {
            std::vector<uint64_t> cookies;
            for (Revocation& r : sockets_to_revoke(sockets, context)) {
                cookies.push_back(r.socket.cookie);
                chosen.emplace(r.socket.cookie, std::move(r));
            }
            return cookies;
        });
        if (!swept) {
            // The process may have exited between the walk and the sweep.
            if (swept.error().errnum != ENOENT) pass.problems.push_back(swept.error().describe());
            continue;
        }
        ++pass.namespaces;
        pass.sockets += swept->sockets;
        for (const OpenSocket& s : swept->destroyed) pass.revoked.push_back(chosen.at(s.cookie));
    }
    return pass;
}

}  // namespace egressd
