// kubeconfig parsing and the in-cluster config.
#include <doctest/doctest.h>
#include <stdlib.h>

#include <optional>

#include "k8s/cluster_config.h"
#include "temp_dir.h"

namespace egressd::k8s {

using k8stest::TempDir;

namespace {

// Sets (or unsets, with nullopt) an environment variable for one scope.
class ScopedEnv {
public:
    ScopedEnv(const char* name, std::optional<std::string> value) : name_(name) {
        if (const char* old = std::getenv(name)) old_ = old;
        if (value)
            ::setenv(name, value->c_str(), 1);
        else
            ::unsetenv(name);
    }
    ~ScopedEnv() {
        if (old_)
            ::setenv(name_, old_->c_str(), 1);
        else
            ::unsetenv(name_);
    }

private:
    const char* name_;
    std::optional<std::string> old_;
};

const char* kKubeconfig = R"(apiVersion: v1
kind: Config
current-context: dev
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:6443/
    certificate-authority: certs/ca.crt
- name: inline
  cluster:
    server: https://[::1]:6443
    certificate-authority-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCmNhCg==
contexts:
- name: dev
  context: {cluster: local, user: token-user, namespace: x}
- name: file
  context: {cluster: local, user: file-user}
- name: certs
  context: {cluster: inline, user: cert-user}
- name: certfiles
  context: {cluster: local, user: certfile-user}
- name: exec
  context: {cluster: local, user: exec-user}
- name: provider
  context: {cluster: local, user: provider-user}
- name: halfcert
  context: {cluster: local, user: half-user}
- name: badb64
  context: {cluster: inline, user: bad-user}
- name: nouser
  context: {cluster: local}
- name: lost
  context: {cluster: nowhere, user: token-user}
users:
- name: token-user
  user: {token: " abc.def "}
- name: file-user
  user: {tokenFile: ../tokens/t}
- name: cert-user
  user:
    client-certificate-data: Y2VydA==
    client-key-data: a2V5
- name: certfile-user
  user: {client-certificate: /abs/c.pem, client-key: k.pem}
- name: exec-user
  user:
    exec: {apiVersion: client.authentication.k8s.io/v1, command: aws}
- name: provider-user
  user:
    auth-provider: {name: gcp}
- name: half-user
  user: {client-certificate: c.pem}
- name: bad-user
  user: {client-key-data: "!!!", client-certificate-data: Y2VydA==}
)";

std::string error_of(const Result<ClusterConfig>& config) {
    REQUIRE_FALSE(config.ok());
    return config.error().describe();
}

}  // namespace

TEST_CASE("kubeconfig: current context, token, CA path relative to the file") {
    TempDir dir;
    const auto path = dir.write("kube/config", kKubeconfig);
    auto config = load_kubeconfig(path);
    REQUIRE_MESSAGE(config.ok(), config.error().describe());
    CHECK(config->server == "https://127.0.0.1:6443");
    CHECK(config->ca_file == (dir / "kube/certs/ca.crt").string());
    CHECK(config->token == "abc.def");
    CHECK(config->token_file == "");
    CHECK(config->source == "kubeconfig " + path.string() + " context dev");
}

TEST_CASE("kubeconfig: tokenFile, client certificates as data and as files") {
    TempDir dir;
    const auto path = dir.write("kube/config", kKubeconfig);
    auto file = load_kubeconfig(path, "file");
    REQUIRE(file.ok());
    CHECK(file->token_file == (dir / "tokens/t").string());
    auto certs = load_kubeconfig(path, "certs");
    REQUIRE_MESSAGE(certs.ok(), certs.error().describe());
    CHECK(certs->server == "https://[::1]:6443");
    CHECK(certs->ca_file == "");
    CHECK(certs->ca_data == "-----BEGIN CERTIFICATE-----\nca\n");
    CHECK(certs->client_cert_data == "cert");
    CHECK(certs->client_key_data == "key");
    auto certfiles = load_kubeconfig(path, "certfiles");
    REQUIRE(certfiles.ok());
    CHECK(certfiles->client_cert_file == "/abs/c.pem");
    CHECK(certfiles->client_key_file == (dir / "kube/k.pem").string());
    auto nouser = load_kubeconfig(path, "nouser");
    REQUIRE(nouser.ok());
    CHECK(nouser->token.empty());
}

TEST_CASE("kubeconfig: errors name the file and the field") {
    TempDir dir;
    const auto path = dir.write("config", kKubeconfig);
    const std::string file = "kubeconfig " + path.string() + ": ";
    CHECK(error_of(load_kubeconfig(path, "nope")) == file + "contexts: no entry named \"nope\"");
    CHECK(error_of(load_kubeconfig(path, "lost")) == file + "clusters: no entry named \"nowhere\"");
    CHECK(error_of(load_kubeconfig(path, "exec")).find(file + "users[name=exec-user].user.exec: exec credential") == 0);
    CHECK(error_of(load_kubeconfig(path, "provider")).find(file + "users[name=provider-user].user.auth-provider") == 0);
    CHECK(error_of(load_kubeconfig(path, "halfcert")).find("client-certificate and client-key") != std::string::npos);
    CHECK(error_of(load_kubeconfig(path, "badb64")) ==
          file + "users[name=bad-user].user.client-key-data: invalid base64");
    const auto no_current = dir.write("nocurrent", "clusters: []\n");
    CHECK(error_of(load_kubeconfig(no_current)) ==
          "kubeconfig " + no_current.string() + ": current-context: not set, and no context was given");
    const auto broken = dir.write("broken", "clusters: [\n");
    CHECK(error_of(load_kubeconfig(broken)).find("kubeconfig " + broken.string()) == 0);
    CHECK(error_of(load_kubeconfig(dir / "absent")).find((dir / "absent").string()) != std::string::npos);
    const auto http = dir.write("ftp",
                                "current-context: c\ncontexts: [{name: c, context: {cluster: x}}]\n"
                                "clusters: [{name: x, cluster: {server: 'ftp://h'}}]\n");
    CHECK(error_of(load_kubeconfig(http)).find("clusters[name=x].cluster.server") != std::string::npos);
}

TEST_CASE("base64") {
    CHECK(*base64_decode("aGVsbG8=") == "hello");
    CHECK(*base64_decode("aGVsbG8") == "hello");
    CHECK(*base64_decode("aGVs\nbG8h") == "hello!");
    CHECK(*base64_decode("") == "");
    CHECK_FALSE(base64_decode("a$==").ok());
    CHECK_FALSE(base64_decode("aGVsb").ok());
    CHECK_FALSE(base64_decode("aG=Vs").ok());
}

TEST_CASE("in-cluster config from the environment and the service account directory") {
    TempDir dir;
    dir.write("token", "tok\n");
    dir.write("ca.crt", "pem");
    {
        ScopedEnv host("KUBERNETES_SERVICE_HOST", "10.96.0.1"), port("KUBERNETES_SERVICE_PORT", "443");
        auto config = in_cluster_config(dir.path());
        REQUIRE_MESSAGE(config.ok(), config.error().describe());
        CHECK(config->server == "https://10.96.0.1:443");
        CHECK(config->token_file == (dir / "token").string());
        CHECK(config->ca_file == (dir / "ca.crt").string());
        CHECK(config->token == "");
        CHECK(config->source == "in-cluster");
    }
    {
        ScopedEnv host("KUBERNETES_SERVICE_HOST", "fd00:10:96::1"), port("KUBERNETES_SERVICE_PORT", "6443");
        auto config = in_cluster_config(dir.path());
        REQUIRE(config.ok());
        CHECK(config->server == "https://[fd00:10:96::1]:6443");
        TempDir empty;
        CHECK(error_of(in_cluster_config(empty.path())).find((empty / "token").string()) != std::string::npos);
        empty.write("token", " \n");
        CHECK(error_of(in_cluster_config(empty.path())).find("is empty") != std::string::npos);
        empty.write("token", "t");
        CHECK(error_of(in_cluster_config(empty.path())).find("ca.crt does not exist") != std::string::npos);
    }
    {
        ScopedEnv host("KUBERNETES_SERVICE_HOST", std::nullopt), port("KUBERNETES_SERVICE_PORT", "443");
        CHECK(error_of(in_cluster_config(dir.path())).find("not running in a cluster") == 0);
    }
}

}  // namespace egressd::k8s
