#include "agent/agent.h"

#include <signal.h>
#include <malloc.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <chrono>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "common/log.h"
#include "core/event.h"
#include "core/files.h"
#include "core/resolvers.h"
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
    std::unique_ptr<Agent> agent(new Agent(config));
    agent->started_at_ = log::timestamp();
    using Step = Status (Agent::*)();
    const std::vector<Step> file_steps = {&Agent::read_first_inputs, &Agent::prepare_cgroup_and_lock,
                                          &Agent::load_datapath, &Agent::start_telemetry_and_events,
                                          &Agent::attach_and_report};
    const std::vector<Step> kubernetes_steps = {&Agent::prepare_kubernetes, &Agent::load_and_adopt,
                                                &Agent::start_telemetry_and_events, &Agent::wait_for_first_sync};
    for (Step step : config.kubernetes ? kubernetes_steps : file_steps) {
        if (auto done = (agent.get()->*step)(); !done) return done.error();
    }
    return agent;
}

// Nothing touches the kernel before the MeshConfig is known good. The inputs
// are watched before they are read, so no change in between is missed.
Status Agent::read_first_inputs() {
    const std::filesystem::path status = status_file_path(config_.run_dir);
    auto sources = FileSources::watch(config_, {status, atomic_write_temporary(status)});
    if (!sources) return sources.error();
    sources_ = std::move(*sources);
    auto mesh = sources_->read_mesh(true);
    if (!mesh) return mesh.error();
    mesh_ = std::move(**mesh);
    if (!config_.policy_dir.empty()) {
        HostResolver::Options options;
        options.dns_server = fmt::format("{}", fmt::join(config_.dns_servers, ","));
        auto resolver = HostResolver::start(options);
        if (!resolver) return resolver.error().with_context(config_.source_file.string() + ": dnsServer");
        resolver_ = std::move(*resolver);
    }
    // Policies and workloads may be wrong without stopping the agent: bad
    // ones are reported and left out, as while running.
    reload_policies();
    reload_workloads();
    return {};
}

Status Agent::prepare_cgroup_and_lock() {
    auto mount = find_cgroup2_mount();
    if (!mount) return mount.error();
    auto cgroup_path = resolve_cgroup_path(config_.cgroup, *mount);
    if (!cgroup_path) return cgroup_path.error().with_context(config_.source_file.string() + ": cgroup");
    cgroup_level_ = cgroup_level(*cgroup_path, *mount);
    cgroup_mount_ = *mount;
    if (auto ok = ensure_bpffs_dir(config_.bpffs); !ok) return ok.error();
    auto lock = AgentLock::acquire(config_.bpffs);
    if (!lock) return lock.error();
    lock_.emplace(std::move(*lock));
    auto cgroup = ensure_cgroup(*cgroup_path);
    if (!cgroup) return cgroup.error();
    cgroup_ = *cgroup;
    return {};
}

// Loads the programs, adopting the pinned maps and the generation they hold
// (enforcement goes on meanwhile), and the reconciler on top of them.
Status Agent::load_and_adopt() {
    auto datapath = Datapath::load({config_.bpffs, config_.capacities, config_.track_flows});
    if (!datapath) return datapath.error();
    datapath_ = std::move(*datapath);
    reconciler_ = std::make_unique<Reconciler>(config_, *datapath_, cgroup_, cgroup_level_);
    // The resolvers whose answers the kernel learns from; the settings are read once, at start.
    const auto resolv_conf = read_file("/etc/resolv.conf");
    resolvers_ =
        trusted_resolvers(config_.dns_servers, resolv_conf ? std::string_view(*resolv_conf) : std::string_view());
    if (auto set = datapath_->set_dns_learning(config_.dns_learning, resolvers_); !set) return set;
    if (resolvers_.empty() && !kube_)
        log::info("no resolver to learn DNS answers from: dnsServer is not set and /etc/resolv.conf names none");
    if (!datapath_->not_adopted_why().empty())
        log::error("not keeping some of the pinned maps in {}: {}; fresh ones replace them once the programs use them",
                   config_.bpffs.string(), datapath_->not_adopted_why());
    if (!datapath_->not_adopted_why().empty() || (datapath_->adopted_maps() && !datapath_->fresh_maps().empty()))
        log::info("made fresh for this build: {}", fmt::join(datapath_->fresh_maps(), ", "));
    if (datapath_->active_image()) {
        reconciler_->continue_pinned();
        log::info("adopted the pinned maps in {} (generation {} in force)", config_.bpffs.string(),
                  reconciler_->applied().generation);
    }
    if (datapath_->adopted_maps()) {
        // The generation in force numbers only what it uses: a host number
        // retired before the restart may still be named by a learned answer,
        // and given to another host it would allow that answer's address.
        auto in_use = datapath_->numbers_in_use();
        if (!in_use) return in_use.error().with_context("reading the numbers the pinned state uses");
        reconciler_->reserve_numbers(*in_use);
    }
    memory_release_.reset(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
    if (!memory_release_.valid()) return system_error("timerfd_create");
    health_check_.reset(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
    const itimerspec every_second{{1, 0}, {1, 0}};
    if (!health_check_.valid() || ::timerfd_settime(health_check_.get(), 0, &every_second, nullptr) != 0)
        return system_error("timerfd for the enforcement check");
    start_loading_revoker();
    return {};
}

// What keeps the kernel from enforcing what the inputs say after trying to
// repair it, or "".
std::string Agent::repair_enforcement() {
    if (!datapath_->pins_intact()) {
        if (auto pinned = datapath_->repin(); !pinned)
            return fmt::format("the pins in {} are gone and cannot be made again ({}); enforcement goes on through "
                               "this agent's own references, but an agent started now would find nothing",
                               config_.bpffs.string(), pinned.error().describe());
        log::error("the pins in {} were gone (bpffs unmounted, or removed): pinned again from this agent's references",
                   config_.bpffs.string());
        if (auto lock = AgentLock::acquire(config_.bpffs)) lock_.emplace(std::move(*lock));
    }
    if (kube_) return "";  // pods' cgroups come and go with the pods: the reconciler follows them
    auto now = open_existing_cgroup(cgroup_.path);
    if (!now)
        return fmt::format("the enforced cgroup {} was removed: nothing is enforced there until it is created again",
                           cgroup_.path.string());
    bool attached = now->id == cgroup_.id;
    for (const LinkInfo& link : read_pinned_links(config_.bpffs, config_.track_flows))
        attached &= link.pinned && link.cgroup_id == now->id;
    if (attached) return "";
    auto reports = datapath_->attach(*now);
    if (!reports)
        return fmt::format("the enforced cgroup {} (id {}) is not enforced and attaching failed: {}",
                           cgroup_.path.string(), now->id, reports.error().describe());
    log::error("the enforced cgroup {} was {} (id {} -> {}): attached again", cgroup_.path.string(),
               now->id == cgroup_.id ? "detached" : "made anew", cgroup_.id, now->id);
    cgroup_ = *now;
    reconciler_->set_cgroup(cgroup_);
    // Workload cgroups below it are new too, and its processes joined it unenforced.
    apply_inputs(std::chrono::steady_clock::now());
    revoke_tightened(Enforced{std::make_shared<const MapImage>(), {}, {}}, std::chrono::steady_clock::now());
    write_status();
    return "";
}

void Agent::check_enforcement() {
    std::string problem = repair_enforcement();
    if (problem == enforcement_problem_) return;
    if (!problem.empty())
        log::error("not enforcing what the inputs say: {}", problem);
    else
        log::info("enforcing again what the inputs say");
    enforcement_problem_ = std::move(problem);
    telemetry_->set_enforcement_problem(enforcement_problem_);
    write_status();
}

// Not loading is not fatal: enforcement of new connections does not depend
// on it. The status file and the log say which it is. Started after the
// datapath's load, which sets libbpf's logging up for both.
void Agent::start_loading_revoker() {
    if (!config_.revoke_on_tighten) {
        revocation_ = "off (revokeOnTighten: false)";
        return;
    }
    // With both policies, libstdc++ runs it deferred (in get()) when no thread can be made.
    revoker_loading_ = std::async(std::launch::async | std::launch::deferred, &Revoker::load);
    revocation_ = "loading";
}

// Every use of the revoker comes through here: the first waits for its load.
Revoker* Agent::revoker() {
    if (!revoker_loading_.valid()) return revoker_.get();
    auto revoker = revoker_loading_.get();
    if (!revoker) {
        revocation_ = "unavailable: " + revoker.error().describe();
        log::error("revocation is unavailable ({}): a tightening applies to new connections only",
                   revoker.error().describe());
        return nullptr;
    }
    revoker_ = std::move(*revoker);
    revocation_ = "on";
    return revoker_.get();
}

// Only a revocation pass compares with it: without one, nothing is copied.
Agent::Enforced Agent::enforced_now() {
    if (!revoker()) return {};
    return {reconciler_->applied_shared(), datapath_->workload_identities(), reconciler_->attached()};
}

namespace {

// A workload cgroup that lost its identity or got another one.
bool identities_withdrawn(const std::map<uint64_t, uint32_t>& before, const std::map<uint64_t, uint32_t>& after) {
    for (const auto& [cgroup, identity] : before) {
        auto it = after.find(cgroup);
        if (it == after.end() || it->second != identity) return true;
    }
    return false;
}

}  // namespace

// Everything enforced is swept when the change may deny what was allowed;
// otherwise only cgroups whose enforcement begins now (their sockets were
// opened unenforced).
void Agent::revoke_tightened(const Enforced& before, std::chrono::steady_clock::time_point flipped) {
    Revoker* revoker = this->revoker();
    if (!revoker) return;
    const MapImage& image = reconciler_->applied();
    std::vector<CgroupTarget> roots;
    if (kube_) {
        for (const auto& [key, target] : reconciler_->attached())
            if (target.id != 0) roots.push_back(target);
    } else {
        roots.push_back(cgroup_);
    }
    const bool everything =
        may_tighten(*before.image, image) || identities_withdrawn(before.workloads, datapath_->workload_identities());
    if (!everything) {
        std::vector<CgroupTarget> begun;
        for (const auto& [key, target] : reconciler_->attached()) {
            auto it = before.attached.find(key);
            if (target.id != 0 && (it == before.attached.end() || it->second.id != target.id)) begun.push_back(target);
        }
        if (begun.empty()) return;
        roots = std::move(begun);
    }
    std::vector<std::pair<egressd_dns_learned_key, egressd_dns_learned>> learned;
    if (image.flags & EGRESSD_CFG_DNS_HOSTS) {
        if (auto entries = datapath_->maps().dns_learned.read_all()) learned = std::move(*entries);
    }
    const Revoker::Pass pass = revoker->revoke(image, roots, cgroup_mount_, datapath_->workload_identities(), learned);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - flipped).count();
    for (const std::string& problem : pass.problems) log::error("revocation: {}", problem);
    const uint64_t now = boottime_now_ns();
    for (const Revocation& revoked : pass.revoked) on_kernel_event(revocation_event(revoked, image.generation, now));
    if (!pass.revoked.empty())
        log::info("revoked {} of {} open connections in {} network namespace(s), {:.1f} ms after generation {}",
                  pass.revoked.size(), pass.sockets, pass.namespaces, seconds * 1000, image.generation);
    telemetry_->record_revocation(pass.revoked.size(), seconds);
}

// Fills the maps before any program can read them: a fresh attach then
// enforces the full configuration from its first connect(). The slot not in
// force is brought up to date after the attach (run()): enforcement does not
// wait for it, and a change never finds it half written, since changes are
// handled in the same loop.
Status Agent::load_datapath() {
    if (auto loaded = load_and_adopt(); !loaded) return loaded;
    reconciler_->set_mesh(mesh_);
    reconciler_->set_policies(policies_);
    reconciler_->set_workloads(workloads_);
    std::vector<std::string> problems;
    if (auto published = reconciler_->apply(problems); !published) return published.error();
    for (const auto& problem : problems) record_error(problem);
    converge_after_start_ = true;
    schedule_memory_release();
    return {};
}

// Events and HTTP before attaching: the first denial is already reported.
Status Agent::start_telemetry_and_events() {
    Telemetry::Options telemetry;
    telemetry.http_address = config_.http_address;
    telemetry.event_buffer = config_.event_buffer;
    telemetry.event_log = config_.event_log;
    telemetry.capacities = config_.capacities;
    auto started = Telemetry::start(telemetry, &datapath_->maps());
    if (!started) return started.error().with_context(config_.source_file.string() + ": httpAddress");
    telemetry_ = std::move(*started);
    // Open connections' bytes, read at scrape time by iterators of their own
    // (the HTTP threads never share the revoker), loaded on first use.
    telemetry_->read_open_sockets(
        [root = cgroup_, mount = cgroup_mount_,
         iterators = std::shared_ptr<Revoker>()]() mutable -> Result<std::map<uint64_t, SocketBytes>> {
            if (!iterators) {
                auto loaded = Revoker::load();
                if (!loaded) return loaded.error().with_context("socket iterators");
                iterators = std::move(*loaded);
            }
            Revoker::OpenBytes open = iterators->open_bytes({root}, mount);
            if (!open.problems.empty()) return make_error(open.problems.front());
            return std::move(open.by_cookie);
        });
    boottime_offset_ns_ = boottime_to_unix_offset_ns();
    auto reader =
        EventReader::open(datapath_->maps().events.get(), [this](const egressd_event& e) { on_kernel_event(e); });
    if (!reader) return reader.error();
    events_ = std::move(*reader);
    publish_telemetry();
    return {};
}

Status Agent::attach_and_report() {
    auto reports = datapath_->attach(cgroup_);
    if (!reports) return reports.error();
    std::string hooks;
    for (const auto& r : *reports) hooks += fmt::format("{}{} {}", hooks.empty() ? "" : ", ", r.hook, r.action);
    log::info("enforcing on cgroup {} (id {}): {}; pins in {}", cgroup_.path.string(), cgroup_.id, hooks,
              config_.bpffs.string());
    if (!datapath_->retired_maps().empty())
        log::info("unpinned maps of another build's layout: {}", fmt::join(datapath_->retired_maps(), ", "));
    log::info("applied generation {} from {}: {}; policies={} workloads={}", reconciler_->applied().generation,
              config_.mesh_config.string(), summarize(mesh_, config_), reconciler_->applied_policies(),
              workloads_.size());
    // Enforcement begins: connections opened before it are decided now.
    revoke_tightened(Enforced{std::make_shared<const MapImage>(), {}, {}}, std::chrono::steady_clock::now());
    telemetry_->set_ready(true, "");
    write_status();
    if (!config_.http_address.empty())
        log::info("serving /metrics, /healthz, /readyz and /events on {} (port {})", config_.http_address,
                  telemetry_->http_port());
    return {};
}

void Agent::record_error(const std::string& message) {
    log::error("{}; generation {} stays in force", message, reconciler_ ? reconciler_->applied().generation : 0);
    last_error_ = message;
    last_error_at_ = log::timestamp();
    if (telemetry_) {
        telemetry_->record_config_error();
        // In Kubernetes mode, once enforcing, a bad object is reported but
        // readiness stays about the agent itself: one bad Egress must not
        // make every node's agent unready and stall rollouts.
        if (!kube_ || !first_sync_applied_)
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
    names.policy = [this](uint32_t number) { return reconciler_->policy_name(number); };
    telemetry_->record_event(event_to_json(event, boottime_offset_ns_, names));
}

void Agent::on_kernel_events() {
    if (auto drained = events_->drain(); !drained) log::error("{}", drained.error().describe());
}

void Agent::publish_telemetry() {
    if (!telemetry_) return;
    const MapImage& image = reconciler_->applied();
    telemetry_->set_map_entries(EGRESSD_STRINGIFY(EGRESSD_MAP_CIDRS), image.cidrs.size());
    telemetry_->set_map_entries(EGRESSD_STRINGIFY(EGRESSD_MAP_PORTS), image.ports.size());
    telemetry_->set_map_entries(EGRESSD_STRINGIFY(EGRESSD_MAP_POLICY_RULES), image.policy_rules.size());
    telemetry_->set_map_entries(EGRESSD_STRINGIFY(EGRESSD_MAP_POLICY_NAMES), image.policies.size());
    telemetry_->set_map_entries(EGRESSD_STRINGIFY(EGRESSD_MAP_IDENTITY_NAMES), datapath_->identity_names().size());
    telemetry_->set_map_entries(EGRESSD_STRINGIFY(EGRESSD_MAP_WORKLOAD_IDENTITIES),
                                datapath_->workload_identities().size());
    telemetry_->set_state(config_.audit ? "audit" : "enforce", reconciler_->applied_policies(),
                          policy_errors_.size());
}

bool Agent::reload_mesh_config(bool force) {
    auto mesh = kube_ ? kube_->read_mesh() : sources_->read_mesh(force);
    if (!mesh) {
        record_error(mesh.error().describe());
        return false;
    }
    if (!*mesh) return false;  // the same bytes
    if (**mesh == mesh_) {
        log::info("{} changed; no effective change", kube_ ? "the MeshConfig" : config_.mesh_config.string());
        return false;
    }
    mesh_ = std::move(**mesh);
    return true;
}

bool Agent::reload_policies(bool reread) {
    if (!kube_ && config_.policy_dir.empty()) return false;
    PolicySet loaded = kube_ ? kube_->read_policies() : sources_->read_policies(reread);
    const bool policies_changed = loaded.policies != *policies_;
    if (!policies_changed && loaded.errors == policy_errors_ && loaded.notes == policy_notes_) return false;
    // Report what is new; errors that stay are not repeated on every event.
    const std::set<std::string> old_errors(policy_errors_.begin(), policy_errors_.end());
    const std::set<std::string> old_notes(policy_notes_.begin(), policy_notes_.end());
    for (const auto& e : loaded.errors)
        if (!old_errors.contains(e)) record_error("policy not applied: " + e);
    for (const auto& n : loaded.notes)
        if (!old_notes.contains(n)) log::info("policy note: {}", n);
    policy_errors_ = std::move(loaded.errors);
    policy_notes_ = std::move(loaded.notes);
    if (!policies_changed) return false;
    policies_ = std::make_shared<const PolicyList>(std::move(loaded.policies));
    if (resolver_) {
        std::set<std::string> hosts;
        for (const auto& p : *policies_) hosts.insert(p.hosts.begin(), p.hosts.end());
        resolver_->set_hosts({hosts.begin(), hosts.end()});
    }
    return policies_changed;
}

bool Agent::reload_workloads() {
    auto loaded = kube_ ? Result<std::vector<Workload>>(kube_->read_workloads()) : sources_->read_workloads();
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

void Agent::on_inputs_changed(unsigned inputs, bool force) {
    const auto started = std::chrono::steady_clock::now();
    bool changed = false;
    if (inputs & kMesh) changed |= reload_mesh_config(force);
    if (inputs & kPolicies) changed |= reload_policies(force);
    if (inputs & kWorkloads) changed |= reload_workloads();
    if (inputs & kHosts) changed |= reload_hosts();
    if (inputs & kMeshCidrs) changed |= reload_mesh_cidrs();
    if (inputs & kDnsServers) reload_dns_servers();  // not a generation: the trusted resolvers
    if ((changed || force) && (!kube_ || first_sync_applied_)) apply_inputs(started);
    publish_telemetry();
    write_status();
}

// Hands the accepted inputs to the reconciler and reports what it applied.
bool Agent::apply_inputs(std::chrono::steady_clock::time_point started) {
    reconciler_->set_mesh(mesh_);
    reconciler_->set_policies(policies_);
    reconciler_->set_workloads(workloads_);
    if (cluster_cidrs_) reconciler_->set_mesh_cidrs(*cluster_cidrs_);
    std::map<std::string, std::vector<IpAddress>> addresses;
    for (const auto& [host, state] : hosts_) addresses[host] = state.addresses;
    reconciler_->set_host_addresses(std::move(addresses));
    std::vector<std::string> problems;
    const Enforced before = enforced_now();
    const Status applied = reconciler_->apply(problems);
    const auto flipped = std::chrono::steady_clock::now();
    for (const auto& problem : problems) record_error(problem);
    if (!applied) {
        record_error("applying the change: " + applied.error().describe());
        return false;
    }
    revoke_tightened(before, flipped);
    const uint64_t generation = reconciler_->applied().generation;
    last_apply_ms_ = millis_since(started);
    last_error_.reset();
    if (telemetry_) {
        telemetry_->record_apply(generation, last_apply_ms_);
        if (!kube_) telemetry_->set_ready(true, "");  // Kubernetes mode: on_kubernetes_changed() says
    }
    log::info("applied generation {} in {:.1f} ms: {}", generation, last_apply_ms_, reconciler_->last_change());
    if (auto converged = datapath_->converge(); !converged)
        log::error("{} (the next change writes more)", converged.error().describe());
    schedule_memory_release();
    return true;
}

// In the event loop a burst of changes is written once, when the burst is
// over (or every kStatusFlushEvery during a long one): at 1,000 pods the file
// is hundreds of KB, and churn would otherwise rewrite it at every change.
void Agent::write_status() {
    if (!in_event_loop_) {
        flush_status();
        return;
    }
    if (!status_dirty_since_) status_dirty_since_ = std::chrono::steady_clock::now();
}

void Agent::flush_status() {
    status_dirty_since_.reset();
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
        {"generation", reconciler_->applied().generation},
        {"appliedAt", reconciler_->applied_at()},
        {"lastChange",
         reconciler_->last_change().empty() ? "initial: " + summarize(mesh_, config_) : reconciler_->last_change()},
        {"lastApplyMillis", last_apply_ms_},
        {"lastError", nullptr},
        {"policies", reconciler_->applied_policies()},
        {"policyErrors", policy_errors_},
        {"policyNotes", policy_notes_},
        {"hosts", hosts},
        {"workloads", workloads_.size()},
        {"mode", config_.audit ? "audit" : "enforce"},
        {"revocation", revocation_},
        {"enforcementProblem", enforcement_problem_.empty() ? nlohmann::json(nullptr) : nlohmann::json(enforcement_problem_)},
        {"httpAddress", config_.http_address},
        {"httpPort", telemetry_ ? telemetry_->http_port() : 0},
    };
    if (last_error_) status["lastError"] = {{"at", last_error_at_}, {"message", *last_error_}};
    nlohmann::json host_names = nlohmann::json::object();  // for egressctl hosts: the kernel has only numbers
    for (const auto& [number, name] : reconciler_->applied().dns_host_names) host_names[std::to_string(number)] = name;
    status["dnsHostNames"] = std::move(host_names);
    if (kube_) {
        status["kubernetes"] = kube_->status();
        nlohmann::json enforced = nlohmann::json::array();
        for (const auto& [uid, cgroup] : reconciler_->attached())
            enforced.push_back({{"uid", uid}, {"cgroup", cgroup.path.string()}, {"cgroupId", cgroup.id}});
        status["kubernetes"]["enforcedPods"] = std::move(enforced);
        status["meshConfig"] = config_.kubernetes->mesh_config_namespace + "/" + config_.kubernetes->mesh_config_name;
    }
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
    // Failing costs only memory held a little longer: say so, go on.
    if (::timerfd_settime(memory_release_.get(), 0, &in_a_second, nullptr) != 0)
        log::error("arming the memory release timer: {}", std::strerror(errno));
}

// One ready descriptor; the exit code when it says to exit.
std::optional<int> Agent::on_ready(int fd, int signal_fd) {
    if (fd == signal_fd) {
        if (auto exit_signal = on_signals(signal_fd)) {
            log::info(
                "exiting on signal {}; enforcement stays attached (pinned in {}); "
                "`egressd --cleanup --config {}` removes it",
                *exit_signal, config_.bpffs.string(), config_.source_file.string());
            return 0;
        }
    } else if (fd == events_->epoll_fd()) {
        on_kernel_events();
    } else if (fd == memory_release_.get()) {
        uint64_t expirations = 0;
        if (::read(fd, &expirations, sizeof(expirations)) == sizeof(expirations)) ::malloc_trim(0);
    } else if (fd == health_check_.get()) {
        uint64_t expirations = 0;
        (void)::read(fd, &expirations, sizeof(expirations));
        check_enforcement();
    } else if (resolver_ && fd == resolver_->notify_fd()) {
        on_inputs_changed(kHosts, false);
    } else if (kube_ && (fd == kube_->fd() || fd == kube_->cgroup_fd() || fd == stale_check_.get())) {
        if (fd == stale_check_.get()) {
            uint64_t expirations = 0;
            (void)::read(fd, &expirations, sizeof(expirations));
        }
        on_kubernetes_changed();
    } else if (sources_) {
        bool lost = false;
        if (const unsigned inputs = sources_->pending(lost); inputs != 0) on_inputs_changed(inputs, lost);
    }
    return std::nullopt;
}

int Agent::run() {
    const sigset_t signals = handled_signals();
    UniqueFd signal_fd(::signalfd(-1, &signals, SFD_NONBLOCK | SFD_CLOEXEC));
    UniqueFd epoll(::epoll_create1(EPOLL_CLOEXEC));
    if (!signal_fd.valid() || !epoll.valid()) {
        log::error("setting up the event loop: {}", std::strerror(errno));
        return 1;
    }
    for (int fd :
         {signal_fd.get(), sources_ ? sources_->fd() : -1, kube_ ? kube_->fd() : -1, kube_ ? kube_->cgroup_fd() : -1,
          resolver_ ? resolver_->notify_fd() : -1, events_->epoll_fd(), memory_release_.get(), health_check_.get(),
          kube_ ? stale_check_.get() : -1}) {
        if (fd < 0) continue;
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.fd = fd;
        if (::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
            log::error("setting up the event loop: epoll_ctl: {}", std::strerror(errno));
            return 1;
        }
    }
    if (!kube_)
        log::info("watching {}{}{} for changes", config_.mesh_config.string(),
                  config_.policy_dir.empty() ? "" : ", " + config_.policy_dir.string(),
                  config_.workloads_file.empty() ? "" : ", " + config_.workloads_file.string());
    if (converge_after_start_) {
        converge_after_start_ = false;
        if (auto converged = datapath_->converge(); !converged)
            log::error("{} (the next change writes more)", converged.error().describe());
        else
            log::info("both slots hold generation {} ({:.0f} ms after start)", reconciler_->applied().generation,
                      millis_since(started_));
    }
    in_event_loop_ = true;
    for (;;) {
        epoll_event events[4];
        // No timeout when idle: idle costs nothing. With the status to write,
        // only a look: it is written once nothing else is waiting.
        const int n = ::epoll_wait(epoll.get(), events, 4, status_dirty_since_ ? 0 : -1);
        if (n < 0 && errno == EINTR) continue;
        if (status_dirty_since_ &&
            (n == 0 || std::chrono::steady_clock::now() - *status_dirty_since_ >= kStatusFlushEvery))
            flush_status();
        for (int i = 0; i < n; ++i) {
            // Whatever goes wrong while handling one event (reporting text
            // that cannot be serialised, an allocation failure), the agent
            // keeps running: the kernel keeps the generation in force, and
            // the next event is handled.
            try {
                if (auto exit_code = on_ready(events[i].data.fd, signal_fd.get())) {
                    if (status_dirty_since_) flush_status();
                    return *exit_code;
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

}  // namespace egressd
