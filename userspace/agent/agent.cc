#include "agent/agent.h"

#include <signal.h>
#include <sys/epoll.h>
#include <sys/inotify.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <chrono>

#include "common/log.h"
#include "kernel/mounts.h"

namespace egressd {
namespace fs = std::filesystem;

namespace {

std::string summarize(const MeshConfig& mesh, const AgentConfig& config) {
    return fmt::format(
        "enableEgress={} enableEgressPolicy={} exclusions={} CIDRs/{} ports inclusions={} meshCIDRs={} sidecarUID={}",
        mesh.enable_egress, mesh.enable_egress_policy, mesh.outbound_ip_range_exclusion.size(),
        mesh.outbound_port_exclusion.size(), mesh.outbound_ip_range_inclusion.size(), config.mesh_cidrs.size(),
        config.sidecar_uid ? std::to_string(*config.sidecar_uid) : "none");
}

double millis_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

Result<std::unique_ptr<Agent>> Agent::start(const AgentConfig& config) {
    std::unique_ptr<Agent> agent(new Agent());
    agent->config_ = config;
    agent->started_at_ = log::timestamp();

    // Nothing touches the kernel before the configuration is known good.
    auto text = read_file(config.mesh_config);
    if (!text) return text.error();
    auto mesh = parse_meshconfig(*text, config.mesh_config.string());
    if (!mesh) return mesh.error();
    agent->last_seen_text_ = *text;

    auto cgroup_path = resolve_cgroup_path(config.cgroup);
    if (!cgroup_path) return cgroup_path.error().with_context(config.source_file.string() + ": cgroup");
    if (auto ok = ensure_bpffs_dir(config.bpffs); !ok) return ok.error();
    auto lock = AgentLock::acquire(config.bpffs);
    if (!lock) return lock.error();
    agent->lock_.emplace(std::move(*lock));
    auto cgroup = ensure_cgroup(*cgroup_path);
    if (!cgroup) return cgroup.error();
    agent->cgroup_ = *cgroup;

    auto datapath = Datapath::load({config.bpffs, config.capacities});
    if (!datapath) return datapath.error();
    agent->datapath_ = std::move(*datapath);

    uint64_t generation = 1;
    if (auto adopted = agent->datapath_->active_image()) {
        generation = adopted->generation + 1;
        log::info("adopted the pinned maps in {} (generation {} in force)", config.bpffs.string(), adopted->generation);
    }
    auto image = build_image(config, *mesh, generation);
    if (!image) return image.error();
    // Fill the maps before any program can read them: a fresh attach then
    // enforces the full configuration from its first connect().
    if (auto published = agent->datapath_->publish(*image); !published) return published.error();
    agent->applied_mesh_ = *mesh;
    agent->applied_image_ = *image;
    agent->applied_at_ = log::timestamp();

    auto reports = agent->datapath_->attach(agent->cgroup_);
    if (!reports) return reports.error();
    std::string hooks;
    for (const auto& r : *reports) hooks += fmt::format("{}{} {}", hooks.empty() ? "" : ", ", r.hook, r.action);
    log::info("enforcing on cgroup {} (id {}): {}; pins in {}", agent->cgroup_.path.string(), agent->cgroup_.id, hooks,
              config.bpffs.string());
    log::info("applied generation {} from {}: {}", generation, config.mesh_config.string(), summarize(*mesh, config));
    agent->last_change_ = "initial: " + summarize(*mesh, config);

    if (auto watching = agent->watch_mesh_config(); !watching) return watching.error();
    agent->write_status();
    return agent;
}

Status Agent::watch_mesh_config() {
    inotify_.reset(::inotify_init1(IN_NONBLOCK | IN_CLOEXEC));
    if (!inotify_.valid()) return system_error("inotify_init1");
    // Watch the directory, not the file: editors replace files by rename and
    // a Kubernetes ConfigMap mount swaps its `..data` symlink; both show up as
    // events on the directory, and the file is re-read and compared.
    const fs::path dir = config_.mesh_config.parent_path();
    const uint32_t mask = IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE | IN_ATTRIB;
    if (::inotify_add_watch(inotify_.get(), dir.c_str(), mask) < 0) return system_error("watching " + dir.string());
    return {};
}

Status Agent::apply(const MeshConfig& mesh) {
    auto image = build_image(config_, mesh, applied_image_.generation + 1);
    if (!image) return image.error();
    if (auto published = datapath_->publish(*image); !published) return published;
    last_change_ = describe_changes(applied_mesh_, mesh);
    applied_mesh_ = mesh;
    applied_image_ = std::move(*image);
    applied_at_ = log::timestamp();
    return {};
}

void Agent::on_mesh_config_event(bool force) {
    const auto started = std::chrono::steady_clock::now();
    const std::string file = config_.mesh_config.string();
    const auto keep = [&](const std::string& why) {
        log::error("{}; generation {} stays in force", why, applied_image_.generation);
        last_error_ = why;
        last_error_at_ = log::timestamp();
        write_status();
    };

    auto text = read_file(config_.mesh_config);
    if (!text) {
        if (last_seen_text_ || force) keep(text.error().describe());
        last_seen_text_.reset();
        return;
    }
    if (!force && last_seen_text_ == *text) return;  // an event for another file, or the same bytes
    last_seen_text_ = *text;

    auto mesh = parse_meshconfig(*text, file);
    if (!mesh) return keep(mesh.error().describe());
    if (*mesh == applied_mesh_) {
        log::info("{} changed; no effective change, generation {} stays", file, applied_image_.generation);
        last_error_.reset();
        write_status();
        return;
    }
    if (auto applied = apply(*mesh); !applied) return keep("applying " + file + ": " + applied.error().describe());
    last_apply_ms_ = millis_since(started);
    last_error_.reset();
    log::info("applied generation {} in {:.1f} ms: {}", applied_image_.generation, last_apply_ms_, last_change_);
    write_status();
}

void Agent::write_status() const {
    nlohmann::json status = {
        {"pid", ::getpid()},
        {"config", config_.source_file.string()},
        {"meshConfig", config_.mesh_config.string()},
        {"cgroup", cgroup_.path.string()},
        {"cgroupId", cgroup_.id},
        {"pinDir", config_.bpffs.string()},
        {"startedAt", started_at_},
        {"generation", applied_image_.generation},
        {"appliedAt", applied_at_},
        {"lastChange", last_change_},
        {"lastApplyMillis", last_apply_ms_},
        {"lastError", nullptr},
    };
    if (last_error_) status["lastError"] = {{"at", last_error_at_}, {"message", *last_error_}};
    if (auto written = write_status_file(config_.run_dir, status); !written)
        log::error("writing status: {}", written.error().describe());
}

int Agent::run() {
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGHUP);
    sigprocmask(SIG_BLOCK, &signals, nullptr);
    UniqueFd signal_fd(::signalfd(-1, &signals, SFD_NONBLOCK | SFD_CLOEXEC));
    UniqueFd epoll(::epoll_create1(EPOLL_CLOEXEC));
    if (!signal_fd.valid() || !epoll.valid()) {
        log::error("setting up the event loop: {}", std::strerror(errno));
        return 1;
    }
    for (int fd : {signal_fd.get(), inotify_.get()}) {
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.fd = fd;
        ::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, fd, &ev);
    }
    log::info("watching {} for changes", config_.mesh_config.string());

    alignas(inotify_event) char buffer[16 * 1024];
    for (;;) {
        epoll_event events[4];
        const int n = ::epoll_wait(epoll.get(), events, 4, -1);  // no timeout: idle costs nothing
        if (n < 0 && errno == EINTR) continue;
        for (int i = 0; i < n; ++i) {
            if (events[i].data.fd == signal_fd.get()) {
                signalfd_siginfo si{};
                while (::read(signal_fd.get(), &si, sizeof(si)) == sizeof(si)) {
                    if (si.ssi_signo == SIGHUP) {
                        on_mesh_config_event(true);
                        continue;
                    }
                    log::info("exiting on signal {}; enforcement stays attached (pinned in {}); "
                              "`egressd --cleanup --config {}` removes it",
                              si.ssi_signo, config_.bpffs.string(), config_.source_file.string());
                    return 0;
                }
            } else {
                bool overflow = false;
                ssize_t len;
                while ((len = ::read(inotify_.get(), buffer, sizeof(buffer))) > 0) {
                    for (char* p = buffer; p < buffer + len;) {
                        auto* ev = reinterpret_cast<inotify_event*>(p);
                        overflow |= (ev->mask & IN_Q_OVERFLOW) != 0;
                        p += sizeof(inotify_event) + ev->len;
                    }
                }
                on_mesh_config_event(overflow);
            }
        }
    }
}

}  // namespace egressd
