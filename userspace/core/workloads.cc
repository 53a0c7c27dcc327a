#include "core/workloads.h"

#include <fmt/format.h>

#include <set>

#include "core/files.h"
#include "core/yaml_input.h"

namespace egressd {

namespace {

using yaml_input::Field;

std::string relative_cgroup(const Field& field) {
    const std::string text = field.string();
    const std::filesystem::path normal = std::filesystem::path(text).lexically_normal();
    if (text.empty() || normal.is_absolute() || normal == "." || *normal.begin() == "..")
        field.fail(fmt::format("\"{}\" must be a path below the enforced cgroup", text));
    std::string out = normal.string();
    if (!out.empty() && out.back() == '/') out.pop_back();
    return out;
}

std::string name_field(const Field& field) {
    std::string text = field.string();
    if (text.empty() || text.size() > 253 || text.find('/') != std::string::npos)
        field.fail(fmt::format("\"{}\" is not a Kubernetes name", text));
    return text;
}

// `text` as a YAML double-quoted scalar that reads back as the same bytes:
// names may hold quotes, backslashes and control characters.
std::string yaml_double_quoted(std::string_view text) {
    std::string out = "\"";
    for (const char c : text) {
        const auto byte = static_cast<unsigned char>(c);
        if (c == '"' || c == '\\')
            out += {'\\', c};
        else if (byte < 0x20 || byte == 0x7f)
            out += fmt::format("\\x{:02x}", byte);
        else
            out += c;  // UTF-8 as it is: a \x escape would name a code point, not a byte
    }
    return out + "\"";
}

}  // namespace

Result<std::vector<Workload>> parse_workloads(std::string_view yaml_text, const std::string& file_name) {
    if (yaml_text.find_first_not_of(" \t\r\n") == std::string_view::npos) return std::vector<Workload>{};
    try {
        const Field root = Field::load(yaml_text, file_name);
        root.reject_unknown_keys({"workloads"});
        std::vector<Workload> workloads;
        std::set<std::string> seen;
        for (const Field& item : root.child("workloads").items()) {
            item.reject_unknown_keys({"cgroup", "namespace", "serviceAccount"});
            const Field cgroup = item.required("cgroup");
            Workload w{relative_cgroup(cgroup),
                       {name_field(item.required("namespace")), name_field(item.required("serviceAccount"))}};
            if (w.identity.namespace_.size() > 63) item.required("namespace").fail("namespaces have at most 63 bytes");
            if (!seen.insert(w.cgroup).second) cgroup.fail(fmt::format("cgroup {} is listed twice", w.cgroup));
            workloads.push_back(std::move(w));
        }
        return workloads;
    } catch (const yaml_input::ParseError& e) {
        return make_error(e.message);
    }
}

Result<std::vector<Workload>> load_workloads(const std::filesystem::path& file) {
    std::error_code ec;
    if (!std::filesystem::exists(file, ec)) return std::vector<Workload>{};
    auto text = read_file(file);
    if (!text) return text.error();
    return parse_workloads(*text, file.string());
}

std::string render_workloads(const std::vector<Workload>& workloads) {
    std::string out =
        "# Workload cgroups (relative to the enforced cgroup) and their identities.\n"
        "# egressctl run --as NAMESPACE/SERVICEACCOUNT adds entries.\nworkloads:\n";
    if (workloads.empty()) return out.substr(0, out.size() - 1) + " []\n";
    for (const auto& w : workloads)
        out += fmt::format("  - cgroup: {}\n    namespace: {}\n    serviceAccount: {}\n", yaml_double_quoted(w.cgroup),
                           yaml_double_quoted(w.identity.namespace_), yaml_double_quoted(w.identity.service_account));
    return out;
}

std::string default_workload_cgroup(const IdentityName& identity) { return identity.str(); }

}  // namespace egressd
