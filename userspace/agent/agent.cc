#include "agent/agent.h"

#include <signal.h>
#include <malloc.h>
#include <sys/epoll.h>
#include <sys/inotify.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <chrono>
#include <set>

#include "common/log.h"
#include "core/event.h"
#include "core/files.h"
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

// "policies +ns/a -ns/b ~ns/c" for added, removed and changed policies.
std::string describe_policy_changes(const std::vector<EgressPolicy>& before, const std::vector<EgressPolicy>& after) {
    std::map<std::pair<std::string, std::string>, const EgressPolicy*> old_by_name;
    for (const auto& p : before) old_by_name[{p.namespace_, p.name}] = &p;
    std::string added, changed, removed;
    for (const auto& p : after) {
        auto it = old_by_name.find({p.namespace_, p.name});
        if (it == old_by_name.end()) added += " +" + p.namespace_ + "/" + p.name;
        else if (!(*it->second == p)) changed += " ~" + p.namespace_ + "/" + p.name;
        if (it != old_by_name.end()) old_by_name.erase(it);
    }
    for (const auto& [name, p] : old_by_name) removed += " -" + name.first + "/" + name.second;
    const std::string all = added + removed + changed;
    return all.empty() ? "" : "policies" + all;
}

// The level of a cgroup below the cgroup2 mount (the mount itself is 0).
uint32_t cgroup_level(const fs::path& cgroup, const fs::path& mount) {
    uint32_t level = 0;
    for (const auto& part : cgroup.lexically_relative(mount)) {
        if (!part.empty() && part != ".") ++level;
    }
    return level;
}

}  // namespace

Result<std::unique_ptr<Agent>> Agent::start(const AgentConfig& config) {
    std::unique_ptr<Agent> agent(new Agent());
    agent->config_ = config;
    agent->started_at_ = log::timestamp();

    // Nothing touches the kernel before the MeshConfig is known good.
    auto text = read_file(config.mesh_config);
    if (!text) return text.error();
    auto mesh = parse_meshconfig(*text, config.mesh_config.string());
    if (!mesh) return mesh.error();
    agent->mesh_text_ = *text;
    agent->mesh_ = *mesh;

    auto mount = find_cgroup2_mount();
    if (!mount) return mount.error();
    auto cgroup_path = resolve_cgroup_path(config.cgroup, *mount);
    if (!cgroup_path) return cgroup_path.error().with_context(config.source_file.string() + ": cgroup");
    agent->cgroup_level_ = cgroup_level(*cgroup_path, *mount);
    if (auto ok = ensure_bpffs_dir(config.bpffs); !ok) return ok.error();
    auto lock = AgentLock::acquire(config.bpffs);
    if (!lock) return lock.error();
    agent->lock_.emplace(std::move(*lock));
    auto cgroup = ensure_cgroup(*cgroup_path);
    if (!cgroup) return cgroup.error();
    agent->cgroup_ = *cgroup;

    if (!config.policy_dir.empty()) {
        HostResolver::Options options;
        options.dns_server = config.dns_server;
        auto resolver = HostResolver::start(options);
        if (!resolver) return resolver.error().with_context(config.source_file.string() + ": dnsServer");
        agent->resolver_ = std::move(*resolver);
    }
    // Watch before reading, so no change between the read and the watch is missed.
    if (auto watching = agent->watch_inputs(); !watching) return watching.error();
    // Policies and workloads may be wrong without stopping the agent: bad
    // ones are reported and left out, as while running.
    agent->reload_policies();
    agent->reload_workloads();

    auto datapath = Datapath::load({config.bpffs, config.capacities});
    if (!datapath) return datapath.error();
    agent->datapath_ = std::move(*datapath);
    agent->identities_ = IdentityRegistry(agent->datapath_->identity_names());

    if (auto adopted = agent->datapath_->active_image()) {
        auto adopted_generation = std::make_shared<MapImage>();
        adopted_generation->generation = adopted->generation;
        agent->applied_image_ = std::move(adopted_generation);
        agent->policy_numbers_ = PolicyRegistry(adopted->policies);
        log::info("adopted the pinned maps in {} (generation {} in force)", config.bpffs.string(), adopted->generation);
    }
    // Fill the maps before any program can read them: a fresh attach then
    // enforces the full configuration from its first connect().
    if (auto published = agent->rebuild(); !published) return published.error();
    if (auto converged = agent->datapath_->converge(); !converged) return converged.error();
    agent->memory_release_.reset(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
    if (!agent->memory_release_.valid()) return system_error("timerfd_create");
    agent->schedule_memory_release();

    // Events and HTTP before attaching: the first denial is already reported.
    Telemetry::Options telemetry;
    telemetry.http_address = config.http_address;
    telemetry.event_buffer = config.event_buffer;
    telemetry.event_log = config.event_log;
    telemetry.capacities = config.capacities;
    auto started = Telemetry::start(telemetry, &agent->datapath_->maps());
    if (!started) return started.error().with_context(config.source_file.string() + ": httpAddress");
    agent->telemetry_ = std::move(*started);
    agent->boottime_offset_ns_ = boottime_to_unix_offset_ns();
    Agent* self = agent.get();
    auto reader = EventReader::open(agent->datapath_->maps().events.get(),
                                    [self](const egressd_event& e) { self->on_kernel_event(e); });
    if (!reader) return reader.error();
    agent->events_ = std::move(*reader);
    agent->publish_telemetry();

    auto reports = agent->datapath_->attach(agent->cgroup_);
    if (!reports) return reports.error();
    std::string hooks;
    for (const auto& r : *reports) hooks += fmt::format("{}{} {}", hooks.empty() ? "" : ", ", r.hook, r.action);
    log::info("enforcing on cgroup {} (id {}): {}; pins in {}", agent->cgroup_.path.string(), agent->cgroup_.id, hooks,
              config.bpffs.string());
    agent->last_change_ = "initial: " + summarize(*mesh, config);
    log::info("applied generation {} from {}: {}; policies={} workloads={}", agent->applied_image_->generation,
              config.mesh_config.string(), summarize(*mesh, config), agent->applied_policies_.size(),
              agent->workloads_.size());

    agent->telemetry_->set_ready(true, "");
    agent->write_status();
    if (!config.http_address.empty())
        log::info("serving /metrics, /healthz, /readyz and /events on {} (port {})", config.http_address,
                  agent->telemetry_->http_port());
    return agent;
}

Status Agent::watch_inputs() {
    inotify_.reset(::inotify_init1(IN_NONBLOCK | IN_CLOEXEC));
    if (!inotify_.valid()) return system_error("inotify_init1");
    // Watch directories, not files: editors replace files by rename and a
    // Kubernetes ConfigMap mount swaps its `..data` symlink; both show up as
    // events on the directory, and the inputs are re-read and compared.
    std::map<fs::path, unsigned> dirs;
    dirs[config_.mesh_config.parent_path()] |= kMesh;
    if (!config_.policy_dir.empty()) dirs[config_.policy_dir] |= kPolicies;
    if (!config_.workloads_file.empty()) dirs[config_.workloads_file.parent_path()] |= kWorkloads;
    const uint32_t mask = IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE | IN_ATTRIB;
    for (const auto& [dir, inputs] : dirs) {
        // The policy directory and the workloads file's directory may not
        // exist yet (nothing registered); an empty one means "none".
        std::error_code ec;
        if (inputs & (kPolicies | kWorkloads)) fs::create_directories(dir, ec);
        const int wd = ::inotify_add_watch(inotify_.get(), dir.c_str(), mask);
        if (wd < 0) return system_error("watching " + dir.string());
        Watch& watch = watches_[wd];  // two paths may name one directory: one descriptor
        watch.dir = fs::weakly_canonical(dir, ec);
        watch.inputs |= inputs;
    }
    std::error_code ec;
    const fs::path status = fs::weakly_canonical(status_file_path(config_.run_dir), ec);
    own_files_ = {status, atomic_write_temporary(status)};
    return {};
}

void Agent::record_error(const std::string& message) {
    log::error("{}; generation {} stays in force", message, applied_image_->generation);
    last_error_ = message;
    last_error_at_ = log::timestamp();
    if (telemetry_) {
        telemetry_->record_config_error();
        telemetry_->set_ready(false, "the latest input was not applied: " + message);
    }
}

void Agent::on_kernel_event(const egressd_event& event) {
    EventNames names;
    names.identity = [this](uint32_t number) -> std::optional<IdentityName> {
        const auto& known = datapath_->identity_names();
        auto it = known.find(number);
        if (it == known.end()) return std::nullopt;
        return it->second;
    };
    names.policy = [this](uint32_t number) -> std::optional<PolicyRef> {
        auto it = policy_names_seen_.find(number);
        if (it == policy_names_seen_.end()) return std::nullopt;
        return it->second;
    };
    telemetry_->record_event(event_to_json(event, boottime_offset_ns_, names));
}

void Agent::on_kernel_events() {
    if (auto drained = events_->drain(); !drained) log::error("{}", drained.error().describe());
}

void Agent::publish_telemetry() {
    if (!telemetry_) return;
    const MapImage& image = *applied_image_;
    telemetry_->set_map_entries(EGRESSD_STRINGIFY(EGRESSD_MAP_CIDRS), image.cidrs.size());
    telemetry_->set_map_entries(EGRESSD_STRINGIFY(EGRESSD_MAP_PORTS), image.ports.size());
    const auto host_rules = std::ranges::count_if(image.policy_rules, is_host_rule);
    telemetry_->set_map_entries(EGRESSD_STRINGIFY(EGRESSD_MAP_POLICIES), image.policy_rules.size() - host_rules);
    telemetry_->set_map_entries(EGRESSD_STRINGIFY(EGRESSD_MAP_POLICY_HOSTS), host_rules);
    telemetry_->set_map_entries(EGRESSD_STRINGIFY(EGRESSD_MAP_POLICY_NAMES), image.policies.size());
    telemetry_->set_map_entries(EGRESSD_STRINGIFY(EGRESSD_MAP_IDENTITY_NAMES), datapath_->identity_names().size());
    telemetry_->set_map_entries(EGRESSD_STRINGIFY(EGRESSD_MAP_WORKLOAD_IDENTITIES), datapath_->workload_identities().size());
    telemetry_->set_state(config_.audit ? "audit" : "enforce", applied_policies_.size(), policies_.errors.size());
}

bool Agent::reload_mesh_config(bool force) {
    const std::string file = config_.mesh_config.string();
    auto text = read_file(config_.mesh_config);
    if (!text) {
        if (mesh_text_ || force) record_error(text.error().describe());
        mesh_text_.reset();
        return false;
    }
    if (!force && mesh_text_ == *text) return false;  // an event for another file, or the same bytes
    mesh_text_ = *text;
    auto mesh = parse_meshconfig(*text, file);
    if (!mesh) {
        record_error(mesh.error().describe());
        return false;
    }
    if (*mesh == mesh_) {
        log::info("{} changed; no effective change", file);
        return false;
    }
    mesh_ = *mesh;
    return true;
}

bool Agent::reload_policies() {
    if (config_.policy_dir.empty()) return false;
    if (!policy_loader_) policy_loader_.emplace(config_.policy_dir);
    PolicySet loaded = policy_loader_->load();
    if (loaded == policies_) return false;
    // Report what is new; errors that stay are not repeated on every event.
    const std::set<std::string> old_errors(policies_.errors.begin(), policies_.errors.end());
    const std::set<std::string> old_notes(policies_.notes.begin(), policies_.notes.end());
    for (const auto& e : loaded.errors)
        if (!old_errors.contains(e)) record_error("policy not applied: " + e);
    for (const auto& n : loaded.notes)
        if (!old_notes.contains(n)) log::info("policy note: {}", n);
    const bool policies_changed = loaded.policies != policies_.policies;
    policies_ = std::move(loaded);
    if (resolver_) {
        std::set<std::string> hosts;
        for (const auto& p : policies_.policies) hosts.insert(p.hosts.begin(), p.hosts.end());
        resolver_->set_hosts({hosts.begin(), hosts.end()});
    }
    return policies_changed;
}

bool Agent::reload_workloads() {
    if (config_.workloads_file.empty()) return false;
    auto loaded = load_workloads(config_.workloads_file);
    if (!loaded) {
        record_error("workloads not updated: " + loaded.error().describe());
        return false;
    }
    if (*loaded == workloads_) return false;
    workloads_ = std::move(*loaded);
    return true;
}

bool Agent::reload_hosts() {
    if (!resolver_) return false;
    auto snapshot = resolver_->snapshot();
    bool addresses_changed = false;
    for (const auto& [host, state] : snapshot) {
        auto old = hosts_.find(host);
        const bool had = old != hosts_.end();
        if (state.last_error && (!had || old->second.last_error != state.last_error)) {
            log::error("resolving {}: {} ({} addresses kept)", host, *state.last_error, state.addresses.size());
            if (telemetry_) telemetry_->record_resolution_failure(host);
        }
        if (!had || old->second.addresses != state.addresses) addresses_changed = true;
    }
    addresses_changed |= snapshot.size() != hosts_.size();
    hosts_ = std::move(snapshot);
    return addresses_changed;
}

Status Agent::push_identities(const std::map<uint64_t, uint32_t>& workload_ids) {
    if (pushed_identities_revision_ == identities_.revision() && workload_ids == datapath_->workload_identities())
        return {};
    if (auto written = datapath_->set_identities(identities_.names(), workload_ids); !written) {
        pushed_identities_revision_.reset();
        return written;
    }
    pushed_identities_revision_ = identities_.revision();
    return {};
}

Status Agent::rebuild() {
    std::map<std::string, std::vector<IpAddress>> addresses;
    for (const auto& [host, state] : hosts_) addresses[host] = state.addresses;

    // Workload cgroups exist before their identity does: a process moved in
    // at once is decided with that identity.
    std::map<uint64_t, uint32_t> workload_ids;
    std::set<uint32_t> used;
    for (const auto& w : workloads_) {
        auto cg = ensure_cgroup(cgroup_.path / w.cgroup);
        if (!cg) {
            record_error("workload " + w.identity.str() + ": " + cg.error().describe());
            continue;
        }
        const uint32_t number = identities_.number_for(w.identity);
        workload_ids[cg->id] = number;
        used.insert(number);
    }
    PolicyInputs policy_inputs{&policies_.policies, &addresses, &identities_, &policy_numbers_, cgroup_level_,
                               &policy_rule_cache_};
    auto built = build_image(config_, mesh_, applied_image_->generation + 1, policy_inputs);
    if (!built) return built.error();
    // Shared with the datapath's record of the slot: 100k entries are not copied.
    const auto image = std::make_shared<const MapImage>(std::move(*built));
    // Rules are sorted by identity first: one insert per identity, not per rule.
    for (uint32_t last = 0; const auto& rule : image->policy_rules)
        if (rule.identity != last) used.insert(last = rule.identity);
    if (identities_.size() > config_.capacities.identities)
        return make_error(fmt::format("id_names_v1 needs {} identities, capacity is {} (capacities.identities)",
                                      identities_.size(), config_.capacities.identities));
    if (workload_ids.size() > config_.capacities.workloads)
        return make_error(fmt::format("identities_v1 needs {} workload cgroups, capacity is {} (capacities.workloads)",
                                      workload_ids.size(), config_.capacities.workloads));

    const std::map<uint64_t, uint32_t> previous_workloads = datapath_->workload_identities();
    // Names first (a generation may use new identities), then the generation,
    // then forget the names nothing uses any more.
    if (auto named = push_identities(workload_ids); !named) return named;
    if (auto published = datapath_->publish(image); !published) return published;
    if (used.size() != identities_.size()) identities_.retain(used);  // used is a subset of the numbered
    std::set<uint32_t> policies_in_use;
    for (const auto& [number, ref] : image->policies) policies_in_use.insert(number);
    policy_numbers_.retain(policies_in_use);
    if (auto pruned = push_identities(workload_ids); !pruned) return pruned;

    std::vector<std::string> changes;
    if (applied_image_->flags & EGRESSD_CFG_VALID) {
        if (!(mesh_ == applied_mesh_)) changes.push_back(describe_changes(applied_mesh_, mesh_));
        if (auto p = describe_policy_changes(applied_policies_, policies_.policies); !p.empty()) changes.push_back(p);
        if (changes.empty() && image->policy_rules != applied_image_->policy_rules)
            changes.push_back(fmt::format("policy entries {} -> {}", applied_image_->policy_rules.size(),
                                          image->policy_rules.size()));
        if (workload_ids != previous_workloads || changes.empty())
            changes.push_back(fmt::format("workloads={}", workload_ids.size()));
    }
    last_change_ = fmt::format("{}", fmt::join(changes, "; "));
    for (const auto& [number, ref] : image->policies) policy_names_seen_[number] = ref;
    applied_mesh_ = mesh_;
    applied_policies_ = policies_.policies;
    applied_image_ = image;
    applied_at_ = log::timestamp();
    return {};
}

void Agent::on_inputs_changed(unsigned inputs, bool force) {
    const auto started = std::chrono::steady_clock::now();
    bool changed = false;
    if (inputs & kMesh) changed |= reload_mesh_config(force);
    if (inputs & kPolicies) changed |= reload_policies();
    if (inputs & kWorkloads) changed |= reload_workloads();
    if (inputs & kHosts) changed |= reload_hosts();
    if (changed || force) {
        if (auto applied = rebuild(); !applied) {
            record_error("applying the change: " + applied.error().describe());
        } else {
            last_apply_ms_ = millis_since(started);
            last_error_.reset();
            if (telemetry_) {
                telemetry_->record_apply(applied_image_->generation, last_apply_ms_);
                telemetry_->set_ready(true, "");
            }
            log::info("applied generation {} in {:.1f} ms: {}", applied_image_->generation, last_apply_ms_,
                      last_change_);
            if (auto converged = datapath_->converge(); !converged)
                log::error("{} (the next change writes more)", converged.error().describe());
            schedule_memory_release();
        }
    }
    publish_telemetry();
    write_status();
}

void Agent::write_status() {
    nlohmann::json hosts = nlohmann::json::object();
    for (const auto& [host, state] : hosts_) {
        nlohmann::json addresses = nlohmann::json::array();
        for (const auto& a : state.addresses) addresses.push_back(a.str());
        hosts[host] = {{"addresses", addresses},
                       {"error", state.last_error ? nlohmann::json(*state.last_error) : nlohmann::json(nullptr)}};
    }
    nlohmann::json status = {
        {"pid", ::getpid()},
        {"config", config_.source_file.string()},
        {"meshConfig", config_.mesh_config.string()},
        {"policyDir", config_.policy_dir.string()},
        {"cgroup", cgroup_.path.string()},
        {"cgroupId", cgroup_.id},
        {"pinDir", config_.bpffs.string()},
        {"startedAt", started_at_},
        {"generation", applied_image_->generation},
        {"appliedAt", applied_at_},
        {"lastChange", last_change_},
        {"lastApplyMillis", last_apply_ms_},
        {"lastError", nullptr},
        {"policies", applied_policies_.size()},
        {"policyErrors", policies_.errors},
        {"policyNotes", policies_.notes},
        {"hosts", hosts},
        {"workloads", workloads_.size()},
        {"mode", config_.audit ? "audit" : "enforce"},
        {"httpAddress", config_.http_address},
        {"httpPort", telemetry_ ? telemetry_->http_port() : 0},
    };
    if (last_error_) status["lastError"] = {{"at", last_error_at_}, {"message", *last_error_}};
    std::string text = json_text(status, 2) + "\n";
    std::error_code ec;
    if (text == status_written_ && fs::exists(status_file_path(config_.run_dir), ec)) return;
    if (auto written = write_status_file(config_.run_dir, text); !written) {
        log::error("writing status: {}", written.error().describe());
        status_written_.clear();
        return;
    }
    status_written_ = std::move(text);
}

sigset_t Agent::handled_signals() {
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGHUP);
    return signals;
}

// Building a generation of 100k entries allocates several MB that are freed
// at once; glibc keeps them for reuse. Within a burst of changes that reuse
// saves page faults; one second after the last change the memory goes back
// to the kernel, so the agent's RSS at rest is what it holds, not its peak.
// A one-shot timer armed by a change: an idle agent never wakes up.
void Agent::schedule_memory_release() {
    const itimerspec in_a_second{{0, 0}, {1, 0}};
    ::timerfd_settime(memory_release_.get(), 0, &in_a_second, nullptr);
}

int Agent::run() {
    const sigset_t signals = handled_signals();
    UniqueFd signal_fd(::signalfd(-1, &signals, SFD_NONBLOCK | SFD_CLOEXEC));
    UniqueFd epoll(::epoll_create1(EPOLL_CLOEXEC));
    if (!signal_fd.valid() || !epoll.valid()) {
        log::error("setting up the event loop: {}", std::strerror(errno));
        return 1;
    }
    const int resolver_fd = resolver_ ? resolver_->notify_fd() : -1;
    const int events_fd = events_->epoll_fd();
    for (int fd : {signal_fd.get(), inotify_.get(), resolver_fd, events_fd, memory_release_.get()}) {
        if (fd < 0) continue;
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.fd = fd;
        ::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, fd, &ev);
    }
    log::info("watching {}{}{} for changes", config_.mesh_config.string(),
              config_.policy_dir.empty() ? "" : ", " + config_.policy_dir.string(),
              config_.workloads_file.empty() ? "" : ", " + config_.workloads_file.string());

    for (;;) {
        epoll_event events[4];
        const int n = ::epoll_wait(epoll.get(), events, 4, -1);  // no timeout: idle costs nothing
        if (n < 0 && errno == EINTR) continue;
        for (int i = 0; i < n; ++i) {
            const int fd = events[i].data.fd;
            // Whatever goes wrong while handling one event (reporting text
            // that cannot be serialised, an allocation failure), the agent
            // keeps running: the kernel keeps the generation in force, and
            // the next event is handled.
            try {
                if (fd == signal_fd.get()) {
                    if (auto exit_signal = on_signals(signal_fd.get())) {
                        log::info("exiting on signal {}; enforcement stays attached (pinned in {}); "
                                  "`egressd --cleanup --config {}` removes it",
                                  *exit_signal, config_.bpffs.string(), config_.source_file.string());
                        return 0;
                    }
                } else if (fd == events_fd) {
                    on_kernel_events();
                } else if (fd == memory_release_.get()) {
                    uint64_t expirations = 0;
                    if (::read(fd, &expirations, sizeof(expirations)) == sizeof(expirations)) ::malloc_trim(0);
                } else if (fd == resolver_fd) {
                    on_inputs_changed(kHosts, false);
                } else {
                    on_inotify();
                }
            } catch (const std::exception& e) {
                log::error("internal error while handling an event: {}; the agent goes on", e.what());
            }
        }
    }
}

std::optional<int> Agent::on_signals(int signal_fd) {
    signalfd_siginfo si{};
    while (::read(signal_fd, &si, sizeof(si)) == sizeof(si)) {
        if (si.ssi_signo != SIGHUP) return static_cast<int>(si.ssi_signo);
        on_inputs_changed(kAll, true);
    }
    return std::nullopt;
}

void Agent::on_inotify() {
    alignas(inotify_event) char buffer[16 * 1024];
    unsigned inputs = 0;
    bool overflow = false;
    ssize_t length;
    while ((length = ::read(inotify_.get(), buffer, sizeof(buffer))) > 0)
        inputs |= inputs_of(buffer, static_cast<size_t>(length), overflow);
    if (inputs != 0 || overflow) on_inputs_changed(overflow ? unsigned{kAll} : inputs, overflow);
}

unsigned Agent::inputs_of(const char* events, size_t length, bool& overflow) const {
    unsigned inputs = 0;
    for (const char* p = events; p < events + length;) {
        const auto* event = reinterpret_cast<const inotify_event*>(p);
        p += sizeof(inotify_event) + event->len;
        overflow |= (event->mask & IN_Q_OVERFLOW) != 0;
        const auto watch = watches_.find(event->wd);
        if (watch == watches_.end()) continue;
        if (event->len > 0 && own_files_.contains(watch->second.dir / event->name)) continue;
        inputs |= watch->second.inputs;
    }
    return inputs;
}

}  // namespace egressd
