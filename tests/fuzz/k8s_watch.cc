// A Kubernetes watch stream as the agent decodes it: the line framer (the
// transport may split the stream at any byte), parse_watch_event on each
// line, the Status helpers, and the objects, by kind, through what the agent
// keeps of them (kept_*) and the functions of kube_objects.h.
//
// Properties: the framer gives the same lines however the stream is split;
// each kube_objects.h function gives the same answer for a full object and
// for what is kept of it (as kube_objects.h promises).
#include <string>
#include <vector>

#include "core/kube_objects.h"
#include "fuzz_support.h"
#include "k8s/line_framer.h"

namespace {

using egressd::fuzz::fail;
using nlohmann::json;
namespace kube = egressd::kube;

// Small, so that the limit is reached too (scripts/fuzz: -max_len=6144).
constexpr size_t kMaxLine = 2048;

struct Framed {
    std::vector<std::string> lines;
    bool too_long = false;
};

// Fed at once, or in chunks of 1..64 bytes drawn from the input's own hash.
Framed frame(std::string_view stream, bool chunked) {
    Framed out;
    egressd::k8s::LineFramer framer(kMaxLine);
    const auto on_line = [&out](std::string_view line) {
        out.lines.emplace_back(line);
        return true;
    };
    uint64_t state = 0xcbf29ce484222325ull;
    for (char c : stream) state = (state ^ static_cast<uint8_t>(c)) * 0x100000001b3ull;
    for (size_t at = 0; at < stream.size();) {
        size_t n = stream.size() - at;
        if (chunked) {
            state ^= state << 13, state ^= state >> 7, state ^= state << 17;
            n = std::min<size_t>(n, 1 + state % 64);
        }
        if (!framer.feed(stream.substr(at, n), on_line)) {
            out.too_long = true;
            break;
        }
        EGRESSD_FUZZ_CHECK(framer.buffered() <= kMaxLine, "buffered");
        at += n;
    }
    return out;
}

// The stores of a reflector: full objects, and what the agent keeps of them.
struct Stores {
    kube::Objects mesh_configs, egresses, pods, namespaces, nodes, services, slices, service_cidrs;
};

std::string describe(const egressd::Result<egressd::MeshConfig>& r) {
    return r ? "ok " + r->name : "error " + r.error().message;
}

void check_same_pods(const kube::PodSelection& a, const kube::PodSelection& b) {
    EGRESSD_FUZZ_CHECK(a.pods == b.pods && a.not_meshed == b.not_meshed && a.host_network == b.host_network &&
                           a.finished == b.finished,
                       "meshed_pods");
}

void compare(const Stores& full, const Stores& kept, const egressd::MeshConventions& mesh) {
    for (const auto& [key, object] : full.mesh_configs) {
        const auto a = kube::mesh_config_from_object(object);
        const auto b = kube::mesh_config_from_object(kept.mesh_configs.at(key));
        if (a.ok() != b.ok() || (a && *a != *b) || (!a && a.error().message != b.error().message))
            fail("mesh_config_from_object differs for the kept object", describe(a) + "\n" + describe(b));
    }
    EGRESSD_FUZZ_CHECK(kube::policies_from_objects(full.egresses) == kube::policies_from_objects(kept.egresses),
                       "policies_from_objects");
    check_same_pods(kube::meshed_pods(full.pods, full.namespaces, mesh, mesh.default_mesh_name),
                    kube::meshed_pods(kept.pods, kept.namespaces, mesh, mesh.default_mesh_name));
    // The problems are compared by number: their text names a Node by
    // metadata.namespace too, which kept_node drops (Nodes have none).
    std::vector<std::string> problems_full, problems_kept;
    EGRESSD_FUZZ_CHECK(kube::cluster_cidrs(full.nodes, full.service_cidrs, problems_full) ==
                               kube::cluster_cidrs(kept.nodes, kept.service_cidrs, problems_kept) &&
                           problems_full.size() == problems_kept.size(),
                       "cluster_cidrs");
    EGRESSD_FUZZ_CHECK(kube::cluster_dns_addresses(full.services, full.slices) ==
                           kube::cluster_dns_addresses(kept.services, kept.slices),
                       "cluster_dns_addresses");
}

void apply(const egressd::k8s::WatchEvent& event, Stores& full, Stores& kept, const egressd::MeshConventions& mesh) {
    using Type = egressd::k8s::WatchEvent::Type;
    const json& object = event.object;
    const auto kind_it = object.find("kind");
    const std::string kind = kind_it != object.end() && kind_it->is_string() ? kind_it->get<std::string>() : "";
    const std::pair<const char*, kube::Objects Stores::*> kinds[] = {
        {"MeshConfig", &Stores::mesh_configs}, {"Egress", &Stores::egresses},      {"Pod", &Stores::pods},
        {"Namespace", &Stores::namespaces},    {"Node", &Stores::nodes},           {"Service", &Stores::services},
        {"EndpointSlice", &Stores::slices},    {"ServiceCIDR", &Stores::service_cidrs},
    };
    for (const auto& [name, store] : kinds) {
        if (kind != name) continue;
        const std::string key = egressd::k8s::object_key(object);
        if (event.type == Type::kDeleted) {
            (full.*store).erase(key);
            (kept.*store).erase(key);
            return;
        }
        json copy = object;
        json k;
        if (store == &Stores::pods) k = kube::kept_pod(std::move(copy), mesh);
        else if (store == &Stores::namespaces) k = kube::kept_namespace(std::move(copy), mesh);
        else if (store == &Stores::nodes) k = kube::kept_node(std::move(copy));
        else if (store == &Stores::services) k = kube::kept_service(std::move(copy));
        else if (store == &Stores::slices) k = kube::kept_endpoint_slice(std::move(copy));
        else k = kube::kept_spec_object(std::move(copy));
        (full.*store)[key] = object;
        (kept.*store)[key] = std::move(k);
        return;
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string_view stream = egressd::fuzz::text(data, size);
    const Framed whole = frame(stream, false);
    const Framed chunked = frame(stream, true);
    EGRESSD_FUZZ_CHECK(whole.too_long == chunked.too_long && whole.lines == chunked.lines, "framing differs");

    // The mesh whose labels the stream names (OSM's, or else FSM's).
    const bool osm = stream.find("openservicemesh.io") != std::string_view::npos ||
                     stream.find("osm-proxy-uuid") != std::string_view::npos;
    {
        const auto& mesh = egressd::mesh_conventions(osm ? egressd::Mesh::osm : egressd::Mesh::fsm);
        Stores full, kept;
        for (const std::string& line : whole.lines) {
            EGRESSD_FUZZ_CHECK(line.find('\n') == std::string::npos && !line.empty(), line);
            auto event = egressd::k8s::parse_watch_event(line);
            if (!event) continue;
            (void)egressd::k8s::resource_version_of(event->object);
            (void)egressd::k8s::status_message(event->object);
            if (event->type == egressd::k8s::WatchEvent::Type::kError) {
                (void)egressd::k8s::is_expired_status(event->object);
                continue;
            }
            apply(*event, full, kept, mesh);
        }
        compare(full, kept, mesh);
    }
    return 0;
}
