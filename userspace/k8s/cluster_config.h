// Where and how to reach the Kubernetes API server: in-cluster (service
// account) or from a kubeconfig file.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

#include "common/result.h"

namespace egressd::k8s {

struct ClusterConfig {
    std::string server;      // "https://host:port"
    std::string ca_file;     // PEM bundle; "" = ca_data, or the system CAs when that is "" too
    std::string ca_data;     // PEM text (kubeconfig certificate-authority-data), used when ca_file is ""
    std::string token_file;  // re-read at most every 60 s and on every 401 (bound tokens rotate)
    std::string token;       // static token (kubeconfig), used when token_file is ""
    std::string client_cert_file, client_key_file;  // client certificate auth (kubeconfig)
    std::string client_cert_data, client_key_data;  // PEM text, used when the *_file is ""
    bool insecure_skip_tls_verify = false;          // kubeconfig insecure-skip-tls-verify (logged)
    std::string source;                             // "in-cluster" or "kubeconfig <path> context <name>", for messages
};

inline constexpr const char* kServiceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount";

// KUBERNETES_SERVICE_HOST / KUBERNETES_SERVICE_PORT (an IPv6 host gets
// brackets), the token and ca.crt under `service_account_dir`. The token is
// read once here so that a missing or empty token is an error at start.
Result<ClusterConfig> in_cluster_config(const std::filesystem::path& service_account_dir = kServiceAccountDir);

// current-context (or `context`): the cluster's server and CA, the user's
// token / tokenFile / client certificate. Relative paths are relative to the
// kubeconfig's directory. exec and auth-provider users are refused. Errors
// name the file and the field.
Result<ClusterConfig> load_kubeconfig(const std::filesystem::path& path, const std::string& context = "");

// Standard base64 (padding optional, whitespace ignored), for *-data fields.
Result<std::string> base64_decode(std::string_view text);

}  // namespace egressd::k8s
