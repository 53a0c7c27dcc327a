#include "k8s/cluster_config.h"

#include <array>
#include <cstdlib>
#include <optional>

#include "core/files.h"
#include "core/yaml_input.h"

namespace egressd::k8s {
namespace fs = std::filesystem;

namespace {

using yaml_input::Node;

// The value of `key` in a mapping, or null when absent (or not a mapping).
const Node* member(const Node& map, std::string_view key) {
    if (!map.is_mapping()) return nullptr;
    for (const auto& [k, v] : map.entries)
        if (k->is_scalar() && k->scalar == key) return v.get();
    return nullptr;
}

std::string trimmed(std::string_view text) {
    const auto begin = text.find_first_not_of(" \t\r\n");
    if (begin == std::string_view::npos) return "";
    const auto end = text.find_last_not_of(" \t\r\n");
    return std::string(text.substr(begin, end - begin + 1));
}

std::string getenv_string(const char* name) {
    const char* value = std::getenv(name);
    return value ? value : "";
}

// Field access in one kubeconfig, with errors that name the file and the field.
class Kubeconfig {
public:
    Kubeconfig(fs::path path, yaml_input::Field root) : path_(std::move(path)), root_(std::move(root)) {}

    Error error(const std::string& field, const std::string& what) const {
        return make_error("kubeconfig " + path_.string() + ": " + field + ": " + what);
    }

    // The string at map[key]; "" when absent or null.
    Result<std::string> scalar(const Node& map, const char* key, const std::string& where) const {
        const Node* node = member(map, key);
        if (!node || node->is_null()) return std::string();
        if (!node->is_scalar()) return error(where.empty() ? key : where + "." + key, "expected a string");
        return node->scalar;
    }

    // The `inner` mapping of the entry named `name` in the list root[list].
    Result<const Node*> named(const char* list, const char* inner, const std::string& name) const {
        const Node* entries = member(root(), list);
        if (entries && !entries->is_null() && !entries->is_sequence()) return error(list, "expected a list");
        if (entries && entries->is_sequence()) {
            for (const auto& entry : entries->items) {
                const Node* entry_name = member(*entry, "name");
                if (!entry_name || !entry_name->is_scalar() || entry_name->scalar != name) continue;
                const Node* node = member(*entry, inner);
                if (!node || !node->is_mapping()) return error(field(list, name, inner), "expected a mapping");
                return node;
            }
        }
        return error(list, "no entry named \"" + name + "\"");
    }

    static std::string field(const char* list, const std::string& name, const char* inner) {
        return std::string(list) + "[name=" + name + "]." + inner;
    }

    // A path relative to the kubeconfig's directory.
    std::string resolve(const std::string& file) const {
        if (file.empty() || fs::path(file).is_absolute()) return file;
        return (path_.parent_path() / file).lexically_normal().string();
    }

    // `path_key` as a resolved path, `data_key` as decoded base64: one of them.
    Status file_or_data(const Node& map, const std::string& where, const char* path_key, const char* data_key,
                        std::string& file, std::string& data) const {
        auto path = scalar(map, path_key, where);
        if (!path) return path.error();
        auto encoded = scalar(map, data_key, where);
        if (!encoded) return encoded.error();
        file = resolve(*path);
        if (!encoded->empty()) {
            auto decoded = base64_decode(*encoded);
            if (!decoded) return error(where + "." + data_key, decoded.error().message);
            data = std::move(*decoded);
        }
        return {};
    }

    const Node& root() const { return root_.node(); }

private:
    fs::path path_;
    yaml_input::Field root_;
};

Status read_cluster(const Kubeconfig& kc, const Node& cluster, const std::string& where, ClusterConfig& out) {
    auto server = kc.scalar(cluster, "server", where);
    if (!server) return server.error();
    if (server->rfind("https://", 0) != 0 && server->rfind("http://", 0) != 0)
        return kc.error(where + ".server", "expected an https:// URL, got \"" + *server + "\"");
    out.server = *server;
    while (out.server.size() > 1 && out.server.back() == '/') out.server.pop_back();
    for (const char* unsupported : {"tls-server-name", "proxy-url"}) {
        auto value = kc.scalar(cluster, unsupported, where);
        if (!value) return value.error();
        if (!value->empty()) return kc.error(where + "." + unsupported, "not supported");
    }
    auto insecure = kc.scalar(cluster, "insecure-skip-tls-verify", where);
    if (!insecure) return insecure.error();
    out.insecure_skip_tls_verify = *insecure == "true";
    return kc.file_or_data(cluster, where, "certificate-authority", "certificate-authority-data", out.ca_file,
                           out.ca_data);
}

Status read_user(const Kubeconfig& kc, const Node& user, const std::string& where, ClusterConfig& out) {
    static constexpr std::array<std::pair<const char*, const char*>, 6> kRefused = {{
        {"exec", "exec credential plugins are not supported; use a token, tokenFile or client certificate"},
        {"auth-provider", "auth providers are not supported; use a token, tokenFile or client certificate"},
        {"username", "basic authentication is not supported"},
        {"password", "basic authentication is not supported"},
        {"as", "impersonation is not supported"},
        {"as-groups", "impersonation is not supported"},
    }};
    for (const auto& [key, why] : kRefused)
        if (const Node* value = member(user, key); value && !value->is_null()) return kc.error(where + "." + key, why);
    auto token = kc.scalar(user, "token", where);
    if (!token) return token.error();
    auto token_file = kc.scalar(user, "tokenFile", where);
    if (!token_file) return token_file.error();
    out.token = trimmed(*token);
    out.token_file = kc.resolve(*token_file);  // a file, when given, wins: it may rotate
    if (Status s = kc.file_or_data(user, where, "client-certificate", "client-certificate-data", out.client_cert_file,
                                   out.client_cert_data);
        !s)
        return s;
    if (Status s =
            kc.file_or_data(user, where, "client-key", "client-key-data", out.client_key_file, out.client_key_data);
        !s)
        return s;
    const bool cert = !out.client_cert_file.empty() || !out.client_cert_data.empty();
    const bool key = !out.client_key_file.empty() || !out.client_key_data.empty();
    if (cert != key) return kc.error(where, "client-certificate and client-key must be given together");
    return {};
}

Result<ClusterConfig> read_context(const Kubeconfig& kc, const std::string& context_name, const fs::path& path) {
    auto context = kc.named("contexts", "context", context_name);
    if (!context) return context.error();
    const std::string where = Kubeconfig::field("contexts", context_name, "context");
    auto cluster_name = kc.scalar(**context, "cluster", where);
    if (!cluster_name) return cluster_name.error();
    if (cluster_name->empty()) return kc.error(where + ".cluster", "not set");
    auto user_name = kc.scalar(**context, "user", where);
    if (!user_name) return user_name.error();

    ClusterConfig config;
    config.source = "kubeconfig " + path.string() + " context " + context_name;
    auto cluster = kc.named("clusters", "cluster", *cluster_name);
    if (!cluster) return cluster.error();
    if (Status s = read_cluster(kc, **cluster, Kubeconfig::field("clusters", *cluster_name, "cluster"), config); !s)
        return s.error();
    if (!user_name->empty()) {
        auto user = kc.named("users", "user", *user_name);
        if (!user) return user.error();
        if (Status s = read_user(kc, **user, Kubeconfig::field("users", *user_name, "user"), config); !s)
            return s.error();
    }
    return config;
}

}  // namespace

Result<std::string> base64_decode(std::string_view text) {
    std::string out;
    uint32_t bits = 0;
    int count = 0;
    bool padding = false;
    for (char c : text) {
        int value;
        if (c >= 'A' && c <= 'Z')
            value = c - 'A';
        else if (c >= 'a' && c <= 'z')
            value = c - 'a' + 26;
        else if (c >= '0' && c <= '9')
            value = c - '0' + 52;
        else if (c == '+')
            value = 62;
        else if (c == '/')
            value = 63;
        else if (c == '=') {
            padding = true;
            continue;
        } else if (c == ' ' || c == '\n' || c == '\r' || c == '\t')
            continue;
        else
            return make_error("invalid base64");
        if (padding) return make_error("invalid base64: data after '='");
        bits = (bits << 6) | static_cast<uint32_t>(value);
        if (++count % 4 == 0) {
            out += static_cast<char>((bits >> 16) & 0xff);
            out += static_cast<char>((bits >> 8) & 0xff);
            out += static_cast<char>(bits & 0xff);
            bits = 0;
        }
    }
    if (count % 4 == 1) return make_error("invalid base64: truncated");
    if (count % 4 == 2) out += static_cast<char>((bits >> 4) & 0xff);
    if (count % 4 == 3) {
        out += static_cast<char>((bits >> 10) & 0xff);
        out += static_cast<char>((bits >> 2) & 0xff);
    }
    return out;
}

Result<ClusterConfig> in_cluster_config(const fs::path& service_account_dir) {
    const std::string host = getenv_string("KUBERNETES_SERVICE_HOST");
    const std::string port = getenv_string("KUBERNETES_SERVICE_PORT");
    if (host.empty() || port.empty())
        return make_error("not running in a cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be set");
    if (port.find_first_not_of("0123456789") != std::string::npos)
        return make_error("KUBERNETES_SERVICE_PORT is not a port number: \"" + port + "\"");
    ClusterConfig config;
    config.source = "in-cluster";
    const bool ipv6 = host.find(':') != std::string::npos && host.front() != '[';
    config.server = "https://" + (ipv6 ? "[" + host + "]" : host) + ":" + port;
    config.token_file = (service_account_dir / "token").string();
    config.ca_file = (service_account_dir / "ca.crt").string();
    auto token = read_file(config.token_file);
    if (!token) return token.error().with_context("in-cluster config");
    if (trimmed(*token).empty()) return make_error("in-cluster config: " + config.token_file + " is empty");
    std::error_code ec;
    if (!fs::is_regular_file(config.ca_file, ec))
        return make_error("in-cluster config: " + config.ca_file + " does not exist");
    return config;
}

Result<ClusterConfig> load_kubeconfig(const fs::path& path, const std::string& context) {
    auto text = read_file(path);
    if (!text) return text.error().with_context("kubeconfig");
    try {
        const Kubeconfig kc(path, yaml_input::Field::load(*text, path.string()));
        std::string name = context;
        if (name.empty()) {
            auto current = kc.scalar(kc.root(), "current-context", "");
            if (!current) return current.error();
            if (current->empty()) return kc.error("current-context", "not set, and no context was given");
            name = *current;
        }
        return read_context(kc, name, path);
    } catch (const yaml_input::ParseError& e) {
        return make_error("kubeconfig " + e.message);
    }
}

}  // namespace egressd::k8s
