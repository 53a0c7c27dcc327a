// The MeshConfig fields egressd enforces, read from a FSM/OSM MeshConfig file.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "core/net.h"

namespace egressd {

struct MeshConfig {
    std::string api_version;  // e.g. "config.flomesh.io/v1alpha3"
    std::string name;         // metadata.name
    std::string namespace_;   // metadata.namespace ("" when absent)

    bool enable_egress = false;                     // spec.traffic.enableEgress (required)
    bool enable_egress_policy = true;               // spec.featureFlags.enableEgressPolicy (FSM default true)
    std::vector<Cidr> outbound_ip_range_exclusion;  // spec.traffic.outboundIPRangeExclusionList
    std::vector<Cidr> outbound_ip_range_inclusion;  // spec.traffic.outboundIPRangeInclusionList
    std::vector<uint16_t> outbound_port_exclusion;  // spec.traffic.outboundPortExclusionList

    bool operator==(const MeshConfig&) const = default;
};

// Accepted apiVersions: config.flomesh.io/v1alpha1..v1alpha3 and
// config.openservicemesh.io/v1alpha1..v1alpha2; kind must be MeshConfig.
// Unknown fields are ignored. Every error message has the form
//   "<file>:<line>:<column>: <field path>: <why>"
// e.g. "mesh.yaml:14:7: spec.traffic.outboundIPRangeExclusionList[1]:
//       \"10.0.0.300/8\" is not a valid CIDR: octet 300 out of range".
// YAML syntax errors name the file, line and column the parser reports. Lines
// and columns are 1-based.
Result<MeshConfig> parse_meshconfig(std::string_view yaml_text, const std::string& file_name);
Result<MeshConfig> load_meshconfig(const std::filesystem::path& file);

}  // namespace egressd
