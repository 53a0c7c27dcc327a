// Kubernetes objects, as the API server sends them, turned into the inputs of
// a generation: the MeshConfig, the Egress policies and the meshed pods of
// this node. Pure: no I/O; the objects come from the reflectors' stores.
//
// The MeshConfig and Egress objects go through the same parsers as the files
// (JSON is YAML), so both modes accept and refuse exactly the same things.
// Only apiVersion, kind, metadata.{name,namespace} and spec are read; status
// and managedFields never matter. Messages name the object ("Egress
// NS/NAME") where the file modes name the file; line and column then refer
// to the object's JSON as printed with two-space indentation.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/result.h"
#include "core/agent_config.h"
#include "core/egress_policy.h"
#include "core/identity.h"
#include "core/meshconfig.h"

namespace egressd::kube {

// The objects of one collection, by "namespace/name" (or "name").
using Objects = std::map<std::string, nlohmann::json>;

// "<kind> <namespace>/<name>", or "<kind> <name>" when cluster-scoped.
std::string object_name(const nlohmann::json& object, const std::string& kind);

Result<MeshConfig> mesh_config_from_object(const nlohmann::json& object);

// Every Egress object; an invalid one is an error of the set, the others apply.
PolicySet policies_from_objects(const Objects& egresses);

// policies_from_objects for a collection that changes a few objects at a
// time: an object equal to the one read last time under its key is not
// parsed again, and its policy is the very object read then (policy_list.h).
// The result equals policies_from_objects(egresses).
class EgressReader {
public:
    PolicySet read(const Objects& egresses);
    // How many objects the last read() parsed.
    size_t parsed_last_read() const { return parsed_last_read_; }

private:
    struct Read {
        nlohmann::json object;
        PolicySet policies;  // what it gives alone
    };
    std::map<std::string, Read> last_;
    size_t parsed_last_read_ = 0;
};

// A pod of this node that the mesh manages, with what finds its cgroup.
struct MeshedPod {
    std::string uid;  // metadata.uid; for a static pod, its mirror annotation (the kubelet's config hash)
    std::string namespace_;
    std::string name;
    IdentityName identity;  // (namespace, spec.serviceAccountName or "default")
    std::string qos_class;  // status.qosClass; "" while unknown
    bool operator==(const MeshedPod&) const = default;
};

struct PodSelection {
    std::vector<MeshedPod> pods;  // sorted by uid
    // Why the other pods are not enforced, for the status.
    size_t not_meshed = 0;    // no proxy label, or a namespace the mesh does not monitor
    size_t host_network = 0;  // share the node's network: never enforced
    size_t finished = 0;      // Succeeded or Failed: no process left to decide for
};

// Meshed: the pod carries the label the mesh's injector sets on every injected
// pod (fsm-proxy-uuid, osm-proxy-uuid), and its namespace's monitored-by label
// equals `mesh_name`. hostNetwork pods are never enforced.
PodSelection meshed_pods(const Objects& pods, const Objects& namespaces, const MeshConventions& mesh,
                         const std::string& mesh_name);

// The cluster's own ranges, for meshCIDRs when the settings give none: every
// node's spec.podCIDRs (or spec.podCIDR), both families, and the ServiceCIDR
// objects' spec.cidrs (networking.k8s.io, where served): a connect() sees a
// Service's cluster IP before kube-proxy translates it. Sorted, unique. A
// range that does not parse is named in `problems` and left out.
std::vector<Cidr> cluster_cidrs(const Objects& nodes, const Objects& service_cidrs, std::vector<std::string>& problems);

// The cluster DNS's addresses, whose answers to the workloads are trusted
// (learning from DNS answers) when the settings name no resolver: the
// Service's cluster IPs (both families) and the addresses of its endpoints
// that are not known to be unready (answers come from them where a socket
// load balancer translates the Service). Sorted, unique; what does not
// parse is left out.
std::vector<IpAddress> cluster_dns_addresses(const Objects& services, const Objects& endpoint_slices);

// What the reflectors keep of each kind (their transforms): the fields that
// the functions above read, and nothing else, so that a stored pod costs a few
// hundred bytes rather than its whole object (managedFields, containers,
// conditions). Every function above gives the same answer for a full object
// and for what is kept of it; tests/unit/test_kube_objects.cc checks that.
//   MeshConfig, Egress, ServiceCIDR: apiVersion, kind, metadata.{name,namespace}, spec.
//   Namespace: metadata.name and the mesh's monitored-by label.
//   Pod: metadata.{name,namespace,uid}, the proxy label, the mirror annotation,
//        spec.{serviceAccountName,hostNetwork}, status.{phase,qosClass}.
//   Node: metadata.name, spec.{podCIDR,podCIDRs}.
//   Service: metadata.{name,namespace}, spec.{clusterIP,clusterIPs}.
//   EndpointSlice: metadata.{name,namespace}, endpoints.
nlohmann::json kept_spec_object(nlohmann::json&& object);
nlohmann::json kept_service(nlohmann::json&& service);
nlohmann::json kept_endpoint_slice(nlohmann::json&& slice);
nlohmann::json kept_namespace(nlohmann::json&& ns, const MeshConventions& mesh);
nlohmann::json kept_pod(nlohmann::json&& pod, const MeshConventions& mesh);
nlohmann::json kept_node(nlohmann::json&& node);

}  // namespace egressd::kube
