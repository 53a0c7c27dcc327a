// The desired content of one generation of the maps, computed from the typed
// model. Pure C++: no libbpf, no root. The kernel adapter writes an image into
// a slot; the reference decision (decision.h) evaluates one.
#pragma once

#include <compare>
#include <cstdint>
#include <string>
#include <vector>

#include "common/result.h"
#include "core/agent_config.h"
#include "core/meshconfig.h"
#include "core/net.h"
#include "egressd_abi.h"

namespace egressd {

struct CidrRule {
    uint8_t table = EGRESSD_TABLE_NONE;  // enum egressd_cidr_table
    Cidr cidr;
    uint32_t rule = 0;  // index of the CIDR in its list as written

    auto operator<=>(const CidrRule&) const = default;
};

struct PortRule {
    uint8_t table = EGRESSD_PORTS_NONE;  // enum egressd_port_table
    uint16_t port = 0;
    uint32_t rule = 0;

    auto operator<=>(const PortRule&) const = default;
};

struct MapImage {
    // Slot-independent configuration (generation, flags, sidecar uid, mode).
    uint64_t generation = 0;
    uint32_t flags = 0;  // enum egressd_config_flag
    uint32_t sidecar_uid = 0;
    uint32_t mode = EGRESSD_MODE_ENFORCE;

    std::vector<CidrRule> cidrs;  // sorted by (table, cidr), one entry per (table, cidr)
    std::vector<PortRule> ports;  // sorted by (table, port), one entry per (table, port)

    bool operator==(const MapImage&) const = default;
};

// Builds the image for one generation. Duplicate CIDRs or ports within a list
// keep the first occurrence's rule index. Sets EGRESSD_CFG_VALID and derives
// EGRESSD_CFG_POLICY_ACTIVE from the semantics (fsm: !enableEgress &&
// enableEgressPolicy; osm: !enableEgress). Refuses, whole, an image that does
// not fit the capacities: "cidrs_v1 needs 20000 entries per generation, capacity
// is 16384 (capacities.cidrs)".
Result<MapImage> build_image(const AgentConfig& agent, const MeshConfig& mesh, uint64_t generation);

// Encoding to and from the kernel's keys and values (maps/egressd_abi.h).
egressd_cidr_key encode_cidr_key(uint8_t slot, uint8_t table, const Cidr& cidr);
egressd_cidr_value encode_cidr_value(const CidrRule& rule);
Result<CidrRule> decode_cidr(const egressd_cidr_key& key, const egressd_cidr_value& value);
egressd_port_key encode_port_key(uint8_t slot, const PortRule& rule);
egressd_port_value encode_port_value(const PortRule& rule);
PortRule decode_port(const egressd_port_key& key, const egressd_port_value& value);
egressd_config encode_config(const MapImage& image);
void decode_config(const egressd_config& config, MapImage& image);

// What turns one slot's content into another: delete what is gone, upsert what
// is new or whose value changed. Applying it leaves exactly `to`.
struct ImageDiff {
    std::vector<CidrRule> cidr_deletes, cidr_upserts;
    std::vector<PortRule> port_deletes, port_upserts;
    bool empty() const {
        return cidr_deletes.empty() && cidr_upserts.empty() && port_deletes.empty() && port_upserts.empty();
    }
};
ImageDiff diff_images(const MapImage& from, const MapImage& to);

// One line for the log, naming what changed between two applied inputs, e.g.
// "enableEgress true -> false; outboundIPRangeExclusionList +10.0.0.0/8 -192.168.0.0/16".
// "no effective change" when nothing egressd enforces changed.
std::string describe_changes(const MeshConfig& before, const MeshConfig& after);

}  // namespace egressd
