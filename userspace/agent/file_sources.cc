#include "agent/file_sources.h"

#include <sys/inotify.h>
#include <unistd.h>

#include "core/files.h"

namespace egressd {
namespace fs = std::filesystem;

Result<std::unique_ptr<FileSources>> FileSources::watch(const AgentConfig& config,
                                                        const std::set<fs::path>& own_files) {
    std::unique_ptr<FileSources> sources(new FileSources(config));
    sources->inotify_.reset(::inotify_init1(IN_NONBLOCK | IN_CLOEXEC));
    if (!sources->inotify_.valid()) return system_error("inotify_init1");
    // Watch directories, not files: editors replace files by rename and a
    // Kubernetes ConfigMap mount swaps its `..data` symlink; both show up as
    // events on the directory, and the inputs are re-read and compared.
    std::map<fs::path, unsigned> dirs;
    dirs[config.mesh_config.parent_path()] |= kMesh;
    if (!config.policy_dir.empty()) dirs[config.policy_dir] |= kPolicies;
    if (!config.workloads_file.empty()) dirs[config.workloads_file.parent_path()] |= kWorkloads;
    const uint32_t mask = IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE | IN_ATTRIB;
    std::error_code ec;
    for (const auto& [dir, inputs] : dirs) {
        // The policy directory and the workloads file's directory may not
        // exist yet (nothing registered); an empty one means "none".
        if (inputs & (kPolicies | kWorkloads)) fs::create_directories(dir, ec);
        const int wd = ::inotify_add_watch(sources->inotify_.get(), dir.c_str(), mask);
        if (wd < 0) return system_error("watching " + dir.string());
        Watch& watch = sources->watches_[wd];  // two paths may name one directory: one descriptor
        watch.dir = fs::weakly_canonical(dir, ec);
        watch.inputs |= inputs;
    }
    for (const auto& file : own_files) sources->own_files_.insert(fs::weakly_canonical(file, ec));
    return sources;
}

unsigned FileSources::pending(bool& overflow) {
    alignas(inotify_event) char buffer[16 * 1024];
    unsigned inputs = 0;
    overflow = false;
    ssize_t length;
    while ((length = ::read(inotify_.get(), buffer, sizeof(buffer))) > 0)
        inputs |= inputs_of(buffer, static_cast<size_t>(length), overflow);
    return overflow ? unsigned{kAll} : inputs;
}

unsigned FileSources::inputs_of(const char* events, size_t length, bool& overflow) const {
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

Result<std::optional<MeshConfig>> FileSources::read_mesh(bool force) {
    auto text = read_file(config_.mesh_config);
    if (!text) {
        // Reported once when the file goes missing, not on every event after.
        const bool was_readable = mesh_text_.has_value();
        mesh_text_.reset();
        if (!was_readable && !force) return std::optional<MeshConfig>();
        return text.error();
    }
    if (!force && mesh_text_ == *text) return std::optional<MeshConfig>();  // an event for another file
    mesh_text_ = *text;
    auto mesh = parse_meshconfig(*text, config_.mesh_config.string());
    if (!mesh) return mesh.error();
    return std::optional<MeshConfig>(std::move(*mesh));
}

PolicySet FileSources::read_policies(bool reread) {
    if (config_.policy_dir.empty()) return {};
    if (!policy_loader_) policy_loader_.emplace(config_.policy_dir);
    return policy_loader_->load(reread);
}

Result<std::vector<Workload>> FileSources::read_workloads() const {
    if (config_.workloads_file.empty()) return std::vector<Workload>{};
    return load_workloads(config_.workloads_file);
}

}  // namespace egressd
