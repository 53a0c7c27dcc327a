#include "core/kube_objects.h"

#include <fmt/format.h>

#include <algorithm>
#include <set>
#include <tuple>

#include "common/json_text.h"

namespace egressd::kube {

namespace {

const nlohmann::json kNull;
// On a static pod's mirror: the kubelet's config hash, which names its cgroup.
constexpr const char* kMirrorAnnotation = "kubernetes.io/config.mirror";

const nlohmann::json& at(const nlohmann::json& object, const char* key) {
    if (!object.is_object()) return kNull;
    auto it = object.find(key);
    return it == object.end() ? kNull : *it;
}

std::string text_at(const nlohmann::json& object, const char* key) {
    const auto& value = at(object, key);
    return value.is_string() ? value.get<std::string>() : std::string();
}

// What the parsers read of an object, as JSON text (JSON is YAML).
std::string parser_input(const nlohmann::json& object) {
    nlohmann::json input = nlohmann::json::object();
    for (const char* key : {"apiVersion", "kind", "spec"})
        if (object.contains(key)) input[key] = object.at(key);
    const auto& metadata = at(object, "metadata");
    input["metadata"] = nlohmann::json::object();
    for (const char* key : {"name", "namespace"})
        if (metadata.is_object() && metadata.contains(key)) input["metadata"][key] = metadata.at(key);
    return json_text(input, 2);
}

}  // namespace

std::string object_name(const nlohmann::json& object, const std::string& kind) {
    const auto& metadata = at(object, "metadata");
    const std::string ns = text_at(metadata, "namespace");
    const std::string name = text_at(metadata, "name");
    return kind + " " + (ns.empty() ? name : ns + "/" + name);
}

Result<MeshConfig> mesh_config_from_object(const nlohmann::json& object) {
    return parse_meshconfig(parser_input(object), object_name(object, "MeshConfig"));
}

namespace {

PolicySet parse_egress(const nlohmann::json& object) {
    return parse_policy_documents(parser_input(object), object_name(object, "Egress"));
}

void add_to(PolicySet& all, const PolicySet& one) {
    for (size_t i = 0; i < one.policies.size(); ++i) all.policies.push_back(one.policies.shared(i));
    all.errors.insert(all.errors.end(), one.errors.begin(), one.errors.end());
    all.notes.insert(all.notes.end(), one.notes.begin(), one.notes.end());
}

}  // namespace

PolicySet policies_from_objects(const Objects& egresses) { return EgressReader().read(egresses); }

PolicySet EgressReader::read(const Objects& egresses) {
    PolicySet all;
    std::map<std::string, Read> next;
    parsed_last_read_ = 0;
    for (const auto& [key, object] : egresses) {
        auto last = last_.extract(key);
        Read read;
        if (last && last.mapped().object == object) {
            read = std::move(last.mapped());
        } else {
            read = Read{object, parse_egress(object)};
            ++parsed_last_read_;
        }
        add_to(all, read.policies);
        next.emplace_hint(next.end(), key, std::move(read));
    }
    last_ = std::move(next);
    // Keys are unique by namespace/name already: the set's order is the parsers'.
    all.policies.sort();
    return all;
}

namespace {

bool namespace_monitored(const Objects& namespaces, const std::string& ns, const MeshConventions& mesh,
                         const std::string& mesh_name) {
    auto it = namespaces.find(ns);
    if (it == namespaces.end()) return false;
    const auto& labels = at(at(it->second, "metadata"), "labels");
    return text_at(labels, mesh.monitored_by_label.c_str()) == mesh_name;
}

MeshedPod meshed_pod(const nlohmann::json& pod) {
    const auto& metadata = at(pod, "metadata");
    MeshedPod meshed;
    meshed.namespace_ = text_at(metadata, "namespace");
    meshed.name = text_at(metadata, "name");
    meshed.uid = text_at(metadata, "uid");
    // A static pod's cgroup is named after the kubelet's config hash, which
    // its mirror pod carries; the mirror's own uid names nothing on the node.
    if (const std::string mirror = text_at(at(metadata, "annotations"), kMirrorAnnotation); !mirror.empty())
        meshed.uid = mirror;
    std::string account = text_at(at(pod, "spec"), "serviceAccountName");
    if (account.empty()) account = "default";  // what the API server fills in
    meshed.identity = IdentityName{meshed.namespace_, account};
    meshed.qos_class = text_at(at(pod, "status"), "qosClass");
    return meshed;
}

}  // namespace

PodSelection meshed_pods(const Objects& pods, const Objects& namespaces, const MeshConventions& mesh,
                         const std::string& mesh_name) {
    PodSelection selection;
    for (const auto& [key, pod] : pods) {
        const auto& metadata = at(pod, "metadata");
        const std::string phase = text_at(at(pod, "status"), "phase");
        if (phase == "Succeeded" || phase == "Failed") {
            ++selection.finished;
            continue;
        }
        if (at(at(pod, "spec"), "hostNetwork") == true) {
            ++selection.host_network;
            continue;
        }
        const auto& proxy_label = at(at(metadata, "labels"), mesh.proxy_uuid_label.c_str());
        if (!proxy_label.is_string() ||
            !namespace_monitored(namespaces, text_at(metadata, "namespace"), mesh, mesh_name)) {
            ++selection.not_meshed;
            continue;
        }
        MeshedPod meshed = meshed_pod(pod);
        if (meshed.uid.empty() || meshed.namespace_.empty()) {
            ++selection.not_meshed;  // not a pod the API server would send
            continue;
        }
        selection.pods.push_back(std::move(meshed));
    }
    std::sort(selection.pods.begin(), selection.pods.end(),
              [](const MeshedPod& a, const MeshedPod& b) { return a.uid < b.uid; });
    return selection;
}

namespace {

void add_ranges(const nlohmann::json& list, const std::string& owner, std::set<Cidr>& into,
                std::vector<std::string>& problems) {
    if (!list.is_array()) return;
    for (const auto& item : list) {
        const std::string text = item.is_string() ? item.get<std::string>() : json_text(item);
        auto cidr = Cidr::parse(text);
        if (cidr)
            into.insert(*cidr);
        else
            problems.push_back(fmt::format("{}: \"{}\" is not a CIDR: {}", owner, text, cidr.error().message));
    }
}

}  // namespace

std::vector<Cidr> cluster_cidrs(const Objects& nodes, const Objects& service_cidrs,
                                std::vector<std::string>& problems) {
    std::set<Cidr> ranges;
    for (const auto& [key, node] : nodes) {
        const auto& spec = at(node, "spec");
        const nlohmann::json& pod_cidrs = at(spec, "podCIDRs");
        if (pod_cidrs.is_array() && !pod_cidrs.empty())
            add_ranges(pod_cidrs, object_name(node, "Node") + " spec.podCIDRs", ranges, problems);
        else if (at(spec, "podCIDR").is_string())
            add_ranges(nlohmann::json::array({at(spec, "podCIDR")}), object_name(node, "Node") + " spec.podCIDR",
                       ranges, problems);
    }
    for (const auto& [key, range] : service_cidrs)
        add_ranges(at(at(range, "spec"), "cidrs"), object_name(range, "ServiceCIDR") + " spec.cidrs", ranges, problems);
    return {ranges.begin(), ranges.end()};
}

namespace {

// Moves from.path[0].path[1]... into the same place of `to`, when it is there.
void keep(nlohmann::json& from, nlohmann::json& to, std::initializer_list<std::string_view> path) {
    nlohmann::json* source = &from;
    for (std::string_view key : path) {
        if (!source->is_object()) return;
        auto it = source->find(key);
        if (it == source->end()) return;
        source = &*it;
    }
    nlohmann::json* target = &to;
    for (std::string_view key : path) target = &(*target)[std::string(key)];
    *target = std::move(*source);
}

nlohmann::json kept(nlohmann::json&& object, std::initializer_list<std::initializer_list<std::string_view>> paths) {
    nlohmann::json out = nlohmann::json::object();
    for (const auto& path : paths) keep(object, out, path);
    return out;
}

}  // namespace

nlohmann::json kept_spec_object(nlohmann::json&& object) {
    return kept(std::move(object),
                {{"apiVersion"}, {"kind"}, {"metadata", "name"}, {"metadata", "namespace"}, {"spec"}});
}

nlohmann::json kept_namespace(nlohmann::json&& ns, const MeshConventions& mesh) {
    return kept(std::move(ns), {{"metadata", "name"}, {"metadata", "labels", mesh.monitored_by_label}});
}

nlohmann::json kept_pod(nlohmann::json&& pod, const MeshConventions& mesh) {
    return kept(std::move(pod), {{"metadata", "name"},
                                 {"metadata", "namespace"},
                                 {"metadata", "uid"},
                                 {"metadata", "labels", mesh.proxy_uuid_label},
                                 {"metadata", "annotations", kMirrorAnnotation},
                                 {"spec", "serviceAccountName"},
                                 {"spec", "hostNetwork"},
                                 {"status", "phase"},
                                 {"status", "qosClass"}});
}

nlohmann::json kept_service(nlohmann::json&& service) {
    return kept(std::move(service),
                {{"metadata", "name"}, {"metadata", "namespace"}, {"spec", "clusterIP"}, {"spec", "clusterIPs"}});
}

nlohmann::json kept_endpoint_slice(nlohmann::json&& slice) {
    return kept(std::move(slice), {{"metadata", "name"}, {"metadata", "namespace"}, {"endpoints"}});
}

std::vector<IpAddress> cluster_dns_addresses(const Objects& services, const Objects& endpoint_slices) {
    std::vector<IpAddress> out;
    const auto add = [&out](const nlohmann::json& text) {
        if (!text.is_string()) return;
        if (auto address = IpAddress::parse(text.get<std::string>())) out.push_back(*address);  // "None" is not one
    };
    for (const auto& [key, service] : services) {
        const auto& spec = at(service, "spec");
        add(at(spec, "clusterIP"));
        if (const auto& ips = at(spec, "clusterIPs"); ips.is_array())
            for (const auto& ip : ips) add(ip);
    }
    for (const auto& [key, slice] : endpoint_slices) {
        const auto& endpoints = at(slice, "endpoints");
        if (!endpoints.is_array()) continue;
        for (const auto& endpoint : endpoints) {
            if (at(at(endpoint, "conditions"), "ready") == false) continue;
            if (const auto& addresses = at(endpoint, "addresses"); addresses.is_array())
                for (const auto& address : addresses) add(address);
        }
    }
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
    return out;
}

nlohmann::json kept_node(nlohmann::json&& node) {
    return kept(std::move(node), {{"metadata", "name"}, {"spec", "podCIDR"}, {"spec", "podCIDRs"}});
}

}  // namespace egressd::kube
