// tests/k8s/fake_apiserver.py in a child process for the "apiserver" test
// suite: HTTPS on 127.0.0.1 with a test CA made by openssl in a private temp
// dir. Stopped (SIGTERM, then SIGKILL) and its dir removed by the destructor;
// killed by the kernel if the test binary dies (PR_SET_PDEATHSIG).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "k8s/cluster_config.h"
#include "temp_dir.h"

namespace egressd::k8stest {

class FakeServer {
public:
    // `args` are added to the command line (e.g. "--uninstall-group", "g").
    explicit FakeServer(std::vector<std::string> args = {});
    ~FakeServer();
    FakeServer(const FakeServer&) = delete;
    FakeServer& operator=(const FakeServer&) = delete;

    // Server, CA and the client's own token file (token "token-1", like the server's).
    k8s::ClusterConfig config() const;
    std::string url() const { return "https://127.0.0.1:" + std::to_string(port_); }
    const TempDir& dir() const { return dir_; }

    // A control request (/_fake/...); throws unless it answers 200.
    nlohmann::json control(const std::string& path, const nlohmann::json& body = nullptr);
    void upsert(const nlohmann::json& object);
    void remove(const std::string& api_version, const std::string& kind, const std::string& ns,
                const std::string& name);
    // The requests the server logged (verb "list", "watch" ...; "" = all).
    std::vector<nlohmann::json> requests(const std::string& verb = "");
    // Rotates the server's token; the client's file is rewritten first.
    void rotate_token(const std::string& token);
    std::string log() const;

private:
    void make_certificates();
    void start(const std::vector<std::string>& args);
    void stop() noexcept;

    TempDir dir_;
    pid_t pid_ = -1;
    uint16_t port_ = 0;
};

// Polls `done` every 10 ms until it is true or `timeout` passed.
bool wait_until(const std::function<bool()>& done, std::chrono::milliseconds timeout = std::chrono::seconds(10));

// A core/v1 Pod on node-1 in namespace "default".
nlohmann::json pod(const std::string& name, const std::string& node = "node-1");

}  // namespace egressd::k8stest
