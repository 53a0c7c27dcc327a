// egressctl check --from NS/SA --to ADDRESS:PORT: what the kernel decides now
// for such a connection, and why: the live maps (the addresses learned from
// DNS answers included) evaluated by the reference model of the decision.
// Exits 0 when it is allowed, 1 when it is denied. With --to HOST:PORT: which
// policy host of the identity the name is, whether its policies grant the
// port, and the addresses learned for it now.
#include <netinet/in.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cerrno>
#include <cstdlib>
#include <iostream>
#include <memory>

#include "cli/common.h"
#include "core/decision.h"
#include "core/dns_hosts.h"
#include "core/dns_message.h"
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

Result<uint16_t> parse_port(const std::string& port) {
    // A whole decimal number, as std::stoll reads one (leading blanks and a
    // sign allowed), else -1: validate_port says what is wrong with it.
    errno = 0;
    char* end = nullptr;
    const long long value = std::strtoll(port.c_str(), &end, 10);
    const bool whole = end != port.c_str() && errno != ERANGE && static_cast<size_t>(end - port.c_str()) == port.size();
    auto number = validate_port(whole ? value : -1);
    if (!number) return number.error().with_context("--to");
    return *number;
}

Result<Destination> parse_destination(const std::string& address, const std::string& port) {
    auto ip = IpAddress::parse(address);
    if (!ip) return ip.error().with_context("--to");
    auto number = parse_port(port);
    if (!number) return number.error();
    return Destination{*ip, *number};
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
            return v.policy ? fmt::format("Egress {}/{} allows {} to {}{}", v.policy->namespace_, v.policy->name, who,
                                          v.target,
                                          v.decision.learned ? " (the address was learned from a DNS answer)" : "")
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

// What the kernel decides with, now: the pinned maps, the active generation,
// and the identity's number there (0 when the kernel does not know it).
struct LiveState {
    MapSet maps;
    MapImage image;
    uint32_t identity = 0;
};
Result<LiveState> read_live_state(const AgentConfig& config, const IdentityName& who) {
    auto maps = open_pinned_maps(config);
    if (!maps) return maps.error();
    auto active = read_active_image(*maps);
    if (!active) return active.error();
    const auto names = maps->read_identity_names();
    if (!names) return names.error();
    uint32_t identity = 0;
    for (const auto& [n, name] : *names)
        if (name == who) identity = n;
    return LiveState{std::move(*maps), std::move(active->image), identity};
}

// The identity's live entries learned from DNS answers: address -> (host number, seconds left).
struct Learned {
    IpAddress address;
    uint32_t host = 0;
    double seconds_left = 0;
};
Result<std::vector<Learned>> live_learned(const MapSet& maps, uint32_t identity) {
    std::vector<Learned> out;
    const auto entries = maps.dns_learned.read_all();
    if (!entries) return entries.error();
    const uint64_t now = boot_time_ns();
    for (const auto& [key, entry] : *entries) {
        if (key.identity != identity || entry.expires_ns <= now) continue;
        Learned l;
        std::copy(std::begin(entry.addr), std::end(entry.addr), l.address.bytes.begin());
        l.host = entry.host;
        l.seconds_left = double(entry.expires_ns - now) / 1e9;
        out.push_back(l);
    }
    return out;
}

// The policy host of `identity` that a name matches, as the kernel picks it:
// the whole name, else the longest wildcard suffix. 0 when none.
uint32_t policy_host_of(const MapImage& image, uint32_t identity, const std::vector<std::string>& labels) {
    const std::vector<uint64_t> suffixes = dns::suffix_hashes(labels);
    const auto find = [&](bool wildcard, uint64_t name) -> uint32_t {
        for (const DnsHostRule& rule : image.dns_hosts)
            if (rule.identity == identity && rule.host == DnsHostName{wildcard, name}) return rule.number;
        return 0;
    };
    if (suffixes.empty()) return 0;
    if (const uint32_t exact = find(false, suffixes.back())) return exact;
    for (size_t k = suffixes.size() - 1; k-- > 0;)
        if (const uint32_t wild = find(true, suffixes[k])) return wild;
    return 0;
}

// check --to HOST:PORT: which policy host of the identity the name is, what
// its policies grant on that port, and the addresses learned for it now.
Exit check_host(const AgentConfig& config, const CheckOptions& options, const IdentityName& who,
                const std::string& host, uint16_t port) {
    auto name = dns::parse_host_name(host);
    if (!name || name->wildcard) return Exit(make_error("--to: \"" + host + "\" is neither an address nor a host name"), 2);
    const uint8_t proto = options.proto == "tcp" ? IPPROTO_TCP : IPPROTO_UDP;
    const auto live = read_live_state(config, who);
    if (!live) return live.error();
    const MapImage& image = live->image;
    const uint32_t number = live->identity;
    const uint32_t matched = number ? policy_host_of(image, number, name->labels) : 0;
    const PolicyRule* grant =
        matched ? lookup_policy(image, number, proto, port, dns_host_address(matched)) : nullptr;
    const std::string target = fmt::format("{}:{}/{}", host, port, options.proto);
    json learned_json = json::array();
    std::string lines;
    if (matched) {
        const auto learned = live_learned(live->maps, number);
        if (!learned) return learned.error();
        for (const Learned& l : *learned) {
            if (l.host != matched) continue;
            const Decision d = decide(&image, Query{l.address, port, proto, options.uid, number, l.host});
            learned_json.push_back({{"address", l.address.str()},
                                    {"expiresInSeconds", l.seconds_left},
                                    {"verdict", d.verdict == EGRESSD_VERDICT_ALLOW ? "allow" : "deny"},
                                    {"reason", reason_name(d.reason)}});
            lines += fmt::format("  learned {} ({:.0f} s left): {} (row {}: {})\n", l.address.str(), l.seconds_left,
                                 d.verdict == EGRESSD_VERDICT_ALLOW ? "ALLOW" : "DENY", reason_row(d.reason),
                                 reason_name(d.reason));
        }
    }
    const auto host_names = dns_host_names(config);
    const auto named = host_names.find(matched);
    const std::string pattern = named != host_names.end() ? named->second : fmt::format("#{}", matched);
    std::string why;
    if (!number)
        why = who.str() + " is not a known identity";
    else if (!matched)
        why = fmt::format("{} is not a host of any Egress policy of {}", host, who.str());
    else if (!grant)
        why = fmt::format("{} is policy host \"{}\" of {}, but no policy grants it {}/{}", host, pattern, who.str(),
                          port, options.proto);
    else
        why = fmt::format("{} is policy host \"{}\": Egress {} allows its addresses (resolved by the agent or "
                          "learned from {}'s DNS answers) on {}/{}",
                          host, pattern, image.policies.contains(grant->policy) ? image.policies.at(grant->policy).str()
                                                                                 : std::to_string(grant->policy),
                          who.str(), port, options.proto);
    if (options.as_json) {
        print_json({{"host", host},
                    {"policyHost", matched ? json(pattern) : json(nullptr)},
                    {"granted", grant != nullptr},
                    {"why", why},
                    {"learned", learned_json},
                    {"generation", image.generation}});
    } else {
        std::cout << fmt::format("{} {} -> {}: {}\n", grant ? "HOST" : "DENY", who.str(), target, why);
        std::cout << (lines.empty() && grant ? "  no address learned now: a connect() is allowed once the workload "
                                               "resolves it (or the agent does)\n"
                                             : lines);
    }
    return grant ? 0 : 1;
}

Exit check_command(const AgentConfig& config, const CheckOptions& options) {
    Verdict v;
    auto identity = IdentityName::parse(options.from);
    if (!identity) return identity.error().with_context("--from");
    v.identity = *identity;
    const auto parts = split_destination(options.to);
    if (!parts) return Exit(parts.error(), 2);
    if (options.proto != "tcp" && options.proto != "udp") return Exit::usage("--proto: expected tcp or udp");
    if (!IpAddress::parse(parts->first)) {  // a host name
        const auto port = parse_port(parts->second);
        if (!port) return port.error();
        return check_host(config, options, v.identity, parts->first, *port);
    }
    const auto dst = parse_destination(parts->first, parts->second);
    if (!dst) return dst.error();
    v.destination = *dst;
    v.protocol = options.proto;
    const uint8_t proto = options.proto == "tcp" ? IPPROTO_TCP : IPPROTO_UDP;

    // The live kernel maps, evaluated by the reference model: what the kernel does now.
    const auto live = read_live_state(config, v.identity);
    if (!live) return live.error();
    const MapImage& image = live->image;
    v.number = live->identity;
    uint32_t learned_host = 0;  // as row 7 finds it: the identity's live entry for the address
    if (v.number) {
        const auto learned = live_learned(live->maps, v.number);
        if (!learned) return learned.error();
        for (const Learned& l : *learned)
            if (l.address == dst->address) learned_host = l.host;
    }
    v.decision = decide(&image, Query{dst->address, dst->port, proto, options.uid, v.number, learned_host});
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
    sub->add_option("--to", options->to, "destination ADDRESS:PORT ([IPV6]:PORT), or HOST:PORT for a policy host")
        ->required();
    sub->add_option("--proto", options->proto, "tcp or udp")->capture_default_str();
    sub->add_option("--uid", options->uid, "uid of the caller (row 2)")->capture_default_str();
    sub->add_flag("--json", options->as_json, "machine-readable output");
    return {sub, true, [options](const AgentConfig& config) { return check_command(config, *options); }};
}

}  // namespace egressd::cli
