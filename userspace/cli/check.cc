// egressctl check --from NS/SA --to ADDRESS:PORT: what the kernel decides now
// for such a connection, and why: the live maps evaluated by the reference
// model of the decision. Exits 0 when it is allowed, 1 when it is denied.
#include <netinet/in.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cerrno>
#include <cstdlib>
#include <iostream>
#include <memory>

#include "cli/common.h"
#include "core/decision.h"
#include "core/net.h"

namespace egressd::cli {

namespace {

using nlohmann::json;

struct CheckOptions {
    std::string from, to, proto = "tcp";
    uint32_t uid = 0;
    bool as_json = false;
};

struct Destination {
    IpAddress address;
    uint16_t port = 0;
};

// ADDRESS:PORT, with an IPv6 address in brackets: [2001:db8::1]:443. An
// error is the shape of the text (a usage error); the address and the port
// are checked by parse_destination.
Result<std::pair<std::string, std::string>> split_destination(const std::string& text) {
    if (!text.empty() && text[0] == '[') {
        const auto close = text.find("]:");
        if (close == std::string::npos) return make_error("--to: expected [IPV6]:PORT, got \"" + text + "\"");
        return std::pair{text.substr(1, close - 1), text.substr(close + 2)};
    }
    const auto colon = text.rfind(':');
    if (colon == std::string::npos || text.find(':') != colon)
        return make_error("--to: expected ADDRESS:PORT (IPv6 as [ADDRESS]:PORT), got \"" + text + "\"");
    return std::pair{text.substr(0, colon), text.substr(colon + 1)};
}

Result<Destination> parse_destination(const std::string& address, const std::string& port) {
    Destination d;
    auto ip = IpAddress::parse(address);
    if (!ip) return ip.error().with_context("--to");
    d.address = *ip;
    // A whole decimal number, as std::stoll reads one (leading blanks and a
    // sign allowed), else -1: validate_port says what is wrong with it.
    errno = 0;
    char* end = nullptr;
    const long long value = std::strtoll(port.c_str(), &end, 10);
    const bool whole = end != port.c_str() && errno != ERANGE && static_cast<size_t>(end - port.c_str()) == port.size();
    auto number = validate_port(whole ? value : -1);
    if (!number) return number.error().with_context("--to");
    d.port = *number;
    return d;
}

// The question and its answer, as check prints them.
struct Verdict {
    IdentityName identity;
    uint32_t number = 0;  // the identity's number in the kernel, 0 when unknown
    Destination destination;
    std::string protocol;
    std::string target;  // ADDRESS:PORT/PROTOCOL
    Decision decision;
    std::optional<PolicyRef> policy;
    uint64_t generation = 0;
    std::string why;

    bool allowed() const { return decision.verdict == EGRESSD_VERDICT_ALLOW; }
};

// Why the kernel decides so, in words.
std::string explain(const Verdict& v, const MapImage& image) {
    const std::string who = v.identity.str();
    switch (v.decision.reason) {
        case EGRESSD_REASON_POLICY:
            return v.policy ? fmt::format("Egress {}/{} allows {} to {}", v.policy->namespace_, v.policy->name, who,
                                          v.target)
                            : "an Egress policy allows it";
        case EGRESSD_REASON_DENY:
            if (!(image.flags & EGRESSD_CFG_POLICY_ACTIVE))
                return "enableEgress is false and Egress policies do not apply (enableEgressPolicy is false)";
            if (v.number == 0) return who + " is not a known identity (no registered workload, no policy names it)";
            return fmt::format("enableEgress is false and no Egress policy allows {} to {}", who, v.target);
        case EGRESSD_REASON_PASSTHROUGH: return "enableEgress is true: mesh-wide passthrough";
        case EGRESSD_REASON_MESH: return "the destination is in a mesh CIDR: the sidecar's business";
        case EGRESSD_REASON_EXCLUDED_CIDR: return "the destination is in outboundIPRangeExclusionList";
        case EGRESSD_REASON_EXCLUDED_PORT: return "the port is in outboundPortExclusionList";
        case EGRESSD_REASON_NOT_INCLUDED: return "the destination is outside outboundIPRangeInclusionList";
        case EGRESSD_REASON_SIDECAR_UID: return "the caller runs as the sidecar UID";
        case EGRESSD_REASON_LOCAL: return "local destination (loopback)";
        case EGRESSD_REASON_NO_CONFIG: return "no valid generation is loaded: fail closed";
        default: return "";
    }
}

void print_verdict(const Verdict& v, bool as_json) {
    const Destination& dst = v.destination;
    if (as_json) {
        print_json({{"verdict", v.allowed() ? "allow" : "deny"},
                    {"reason", reason_name(v.decision.reason)},
                    {"row", reason_row(v.decision.reason)},
                    {"why", v.why},
                    {"from",
                     {{"namespace", v.identity.namespace_},
                      {"serviceAccount", v.identity.service_account},
                      {"identity", v.number}}},
                    {"to", {{"address", dst.address.str()}, {"port", dst.port}, {"protocol", v.protocol}}},
                    {"generation", v.generation},
                    {"policy",
                     v.policy ? json{{"namespace", v.policy->namespace_}, {"name", v.policy->name}} : json(nullptr)}});
        return;
    }
    std::cout << fmt::format("{} {} -> {}: {} (row {}: {})\n", v.allowed() ? "ALLOW" : "DENY", v.identity.str(),
                             v.target, v.why, reason_row(v.decision.reason), reason_name(v.decision.reason));
    std::cout << fmt::format("  identity {} = {}; generation {}\n", v.identity.str(),
                             v.number ? std::to_string(v.number) : std::string("unknown"), v.generation);
}

Exit check_command(const AgentConfig& config, const CheckOptions& options) {
    Verdict v;
    auto identity = IdentityName::parse(options.from);
    if (!identity) return identity.error().with_context("--from");
    v.identity = *identity;
    const auto parts = split_destination(options.to);
    if (!parts) return Exit(parts.error(), 2);
    const auto dst = parse_destination(parts->first, parts->second);
    if (!dst) return dst.error();
    v.destination = *dst;
    if (options.proto != "tcp" && options.proto != "udp") return Exit::usage("--proto: expected tcp or udp");
    v.protocol = options.proto;
    const uint8_t proto = options.proto == "tcp" ? IPPROTO_TCP : IPPROTO_UDP;

    // The live kernel maps, evaluated by the reference model: what the kernel does now.
    const auto maps = open_pinned_maps(config);
    if (!maps) return maps.error();
    const auto active = read_active_image(*maps);
    if (!active) return active.error();
    const MapImage& image = active->image;
    const auto names = maps->read_identity_names();
    if (!names) return names.error();
    for (const auto& [n, name] : *names)
        if (name == v.identity) v.number = n;
    v.decision = decide(&image, Query{dst->address, dst->port, proto, options.uid, v.number});
    if (v.decision.reason == EGRESSD_REASON_POLICY && image.policies.contains(v.decision.rule))
        v.policy = image.policies.at(v.decision.rule);
    v.generation = image.generation;
    v.target = fmt::format("{}:{}/{}", dst->address.str(), dst->port, v.protocol);
    v.why = explain(v, image);
    print_verdict(v, options.as_json);
    return v.allowed() ? 0 : 1;
}

}  // namespace

Command add_check_command(CLI::App& app) {
    auto options = std::make_shared<CheckOptions>();
    auto* sub = app.add_subcommand("check", "explain what the kernel decides now for a connection");
    sub->add_option("--from", options->from, "source identity NAMESPACE/SERVICEACCOUNT")->required();
    sub->add_option("--to", options->to, "destination ADDRESS:PORT ([IPV6]:PORT)")->required();
    sub->add_option("--proto", options->proto, "tcp or udp")->capture_default_str();
    sub->add_option("--uid", options->uid, "uid of the caller (row 2)")->capture_default_str();
    sub->add_flag("--json", options->as_json, "machine-readable output");
    return {sub, true, [options](const AgentConfig& config) { return check_command(config, *options); }};
}

}  // namespace egressd::cli
