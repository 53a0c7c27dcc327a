// egressctl events: the decision events the agent keeps (GET /events on its
// httpAddress), once or followed.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <memory>
#include <thread>

#include "cli/agent_http.h"
#include "cli/common.h"
#include "common/json_text.h"
#include "core/identity.h"

namespace egressd::cli {

namespace {

using nlohmann::json;

struct EventsOptions {
    bool follow = false;
    bool as_json = false;
    std::string identity, verdict;
};

std::string event_line(const json& e) {
    const std::string who = workload_name(e["identity"], e.value("cgroupId", 0ull));
    const std::string target = address_for_port(e.value("destination", ""));
    std::string why = fmt::format("{} (row {})", e.value("reason", ""), e.value("row", 0));
    if (!e["policy"].is_null()) why += " Egress " + e["policy"].get<std::string>();
    const json& proto = e["protocol"];
    const std::string protocol = proto.is_string() ? proto.get<std::string>() : json_text(proto);
    return fmt::format("{} {:<5} {} -> {}:{}/{} {} {}[{}]", e.value("time", ""), e.value("verdict", ""), who, target,
                       e.value("port", 0), protocol, why, e.value("comm", ""), e.value("pid", 0));
}

// The events after `since`, as the agent sent them (a JSON array).
Result<json> get_events(AgentHttp& agent, const EventsOptions& options, uint64_t since) {
    std::multimap<std::string, std::string> query = {{"since", std::to_string(since)}};
    if (!options.identity.empty()) query.emplace("identity", options.identity);
    if (!options.verdict.empty()) query.emplace("verdict", options.verdict);
    auto reply = agent.get("/events", query);
    if (!reply) return reply.error();
    if (reply->status != 200) return make_error(fmt::format("egressd answered {} to /events", reply->status));
    try {
        return json::parse(reply->body);
    } catch (const json::exception& e) {
        return make_error(std::string("egressd sent malformed events: ") + e.what());
    }
}

Exit events_command(const AgentConfig& config, const EventsOptions& options) {
    if (config.http_address.empty())
        return make_error("events come from the agent's HTTP endpoint; httpAddress is off");
    const std::string& verdict = options.verdict;
    if (!verdict.empty() && verdict != "deny" && verdict != "audit" && verdict != "allow" && verdict != "revoked")
        return Exit::usage("--verdict: expected deny, audit, allow or revoked");
    if (!options.identity.empty()) {
        if (auto identity = IdentityName::parse(options.identity); !identity)
            return identity.error().with_context("--identity");
    }
    auto agent = AgentHttp::open(config);
    if (!agent) return agent.error();
    uint64_t since = 0;
    for (;;) {
        const auto events = get_events(*agent, options, since);
        if (!events) return events.error();
        for (const auto& e : *events) {
            since = std::max<uint64_t>(since, e.value("seq", 0ull));
            std::cout << (options.as_json ? json_text(e) : event_line(e)) << "\n";
        }
        std::cout.flush();
        if (!options.follow) return 0;
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
}

}  // namespace

Command add_events_command(CLI::App& app) {
    auto options = std::make_shared<EventsOptions>();
    auto* sub = app.add_subcommand("events", "decision events kept by the agent (denials, audit, allowed if asked)");
    sub->add_flag("-f,--follow", options->follow, "keep printing new events");
    sub->add_flag("--json", options->as_json, "one JSON object per line");
    sub->add_option("--identity", options->identity, "only events of NAMESPACE/SERVICEACCOUNT");
    sub->add_option("--verdict", options->verdict, "only deny, audit, allow or revoked");
    return {sub, false, [options](const AgentConfig& config) { return events_command(config, *options); }};
}

}  // namespace egressd::cli
