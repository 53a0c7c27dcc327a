#include "core/meshconfig.h"

#include <algorithm>
#include <array>

#include <fmt/format.h>

#include "core/files.h"
#include "core/yaml_input.h"

namespace egressd {

namespace {

using yaml_input::Field;

constexpr std::array<std::string_view, 5> kMeshConfigApiVersions = {
    "config.flomesh.io/v1alpha1",         "config.flomesh.io/v1alpha2",         "config.flomesh.io/v1alpha3",
    "config.openservicemesh.io/v1alpha1", "config.openservicemesh.io/v1alpha2",
};

std::vector<uint16_t> port_list(const Field& list) {
    std::vector<uint16_t> ports;
    for (const Field& item : list.items()) {
        auto port = validate_port(item.integer());
        if (!port) item.fail(port.error().message);
        ports.push_back(*port);
    }
    return ports;
}

MeshConfig read_meshconfig(const Field& root) {
    MeshConfig mesh;
    // kind first: handed another resource (an Egress policy), that is the useful message.
    const Field kind = root.required("kind");
    if (kind.string() != "MeshConfig") kind.fail(fmt::format("expected MeshConfig, got {}", kind.string()));
    const Field api_version = root.required("apiVersion");
    mesh.api_version = api_version.string();
    if (std::find(kMeshConfigApiVersions.begin(), kMeshConfigApiVersions.end(), mesh.api_version) == kMeshConfigApiVersions.end())
        api_version.fail(fmt::format("\"{}\" is not supported; expected one of {}", mesh.api_version,
                                     fmt::join(kMeshConfigApiVersions, ", ")));

    const Field metadata = root.child("metadata");
    if (const Field name = metadata.child("name"); name.present()) mesh.name = name.string();
    if (const Field ns = metadata.child("namespace"); ns.present()) mesh.namespace_ = ns.string();

    const Field spec = root.required("spec");
    const Field traffic = spec.required("traffic");
    mesh.enable_egress = traffic.required("enableEgress").boolean();
    if (const Field policy = spec.child("featureFlags").child("enableEgressPolicy"); policy.present())
        mesh.enable_egress_policy = policy.boolean();
    mesh.outbound_ip_range_exclusion = traffic.child("outboundIPRangeExclusionList").cidrs();
    mesh.outbound_ip_range_inclusion = traffic.child("outboundIPRangeInclusionList").cidrs();
    mesh.outbound_port_exclusion = port_list(traffic.child("outboundPortExclusionList"));
    return mesh;
}

}  // namespace

Result<MeshConfig> parse_meshconfig(std::string_view yaml_text, const std::string& file_name) {
    try {
        return read_meshconfig(Field::load(yaml_text, file_name));
    } catch (const yaml_input::ParseError& e) {
        return make_error(e.message);
    }
}

Result<MeshConfig> load_meshconfig(const std::filesystem::path& file) {
    auto text = read_file(file);
    if (!text) return text.error();
    return parse_meshconfig(*text, file.string());
}

}  // namespace egressd
