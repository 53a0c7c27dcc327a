#include "fake_server.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

#ifndef EGRESSD_SOURCE_DIR
#error "EGRESSD_SOURCE_DIR must name the source tree"
#endif

namespace egressd::k8stest {
namespace fs = std::filesystem;

namespace {

std::string slurp(const fs::path& path) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

// Forks and execs argv[0] (PATH searched) with output appended to `out`.
pid_t spawn(std::vector<std::string> args, const fs::path& out) {
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const std::string out_path = out.string();
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0) throw std::runtime_error("fork failed");
    if (pid == 0) {
        // Only async-signal-safe calls: the parent has threads.
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (::getppid() != parent) ::_exit(127);
        sigset_t none;
        ::sigemptyset(&none);
        ::sigprocmask(SIG_SETMASK, &none, nullptr);
        const int fd = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            ::dup2(fd, 1);
            ::dup2(fd, 2);
        }
        ::execvp(argv[0], argv.data());
        ::_exit(127);
    }
    return pid;
}

void run(const std::vector<std::string>& args, const fs::path& out) {
    const pid_t pid = spawn(args, out);
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) throw std::runtime_error(args[0] + " failed:\n" + slurp(out));
}

size_t append(char* data, size_t size, size_t count, void* user) {
    static_cast<std::string*>(user)->append(data, size * count);
    return size * count;
}

}  // namespace

FakeServer::FakeServer(std::vector<std::string> args) {
    try {
        make_certificates();
        dir_.write("server-token", "token-1\n");
        dir_.write("client-token", "token-1\n");
        start(args);
    } catch (...) {
        stop();
        throw;
    }
}

FakeServer::~FakeServer() { stop(); }

void FakeServer::make_certificates() {
    const fs::path d = dir_.path(), out = d / "openssl.log";
    run({"openssl",
         "req",
         "-x509",
         "-newkey",
         "ec",
         "-pkeyopt",
         "ec_paramgen_curve:prime256v1",
         "-nodes",
         "-keyout",
         d / "ca.key",
         "-out",
         d / "ca.crt",
         "-days",
         "2",
         "-subj",
         "/CN=egressd-test-ca",
         "-addext",
         "basicConstraints=critical,CA:TRUE",
         "-addext",
         "keyUsage=critical,keyCertSign,cRLSign"},
        out);
    run({"openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
         d / "server.key", "-out", d / "server.csr", "-subj", "/CN=127.0.0.1"},
        out);
    dir_.write("ext.cnf",
               "subjectAltName=IP:127.0.0.1,IP:::1\nbasicConstraints=CA:FALSE\n"
               "extendedKeyUsage=serverAuth\n");
    run({"openssl", "x509", "-req", "-in", d / "server.csr", "-CA", d / "ca.crt", "-CAkey", d / "ca.key",
         "-CAcreateserial", "-out", d / "server.crt", "-days", "2", "-extfile", d / "ext.cnf"},
        out);
}

void FakeServer::start(const std::vector<std::string>& extra) {
    const fs::path d = dir_.path();
    std::vector<std::string> args = {"python3",
                                     EGRESSD_SOURCE_DIR "/tests/k8s/fake_apiserver.py",
                                     "--port",
                                     "0",
                                     "--port-file",
                                     d / "port",
                                     "--cert",
                                     d / "server.crt",
                                     "--key",
                                     d / "server.key",
                                     "--token-file",
                                     d / "server-token",
                                     "--log",
                                     d / "server.log",
                                     "--bookmark-interval",
                                     "1"};
    args.insert(args.end(), extra.begin(), extra.end());
    pid_ = spawn(args, d / "server.out");
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
    while (std::chrono::steady_clock::now() < deadline) {
        int status;
        if (::waitpid(pid_, &status, WNOHANG) == pid_) {
            pid_ = -1;
            throw std::runtime_error("fake_apiserver.py exited:\n" + log());
        }
        const std::string port = slurp(d / "port");
        if (!port.empty() && port.back() == '\n') {
            port_ = static_cast<uint16_t>(std::stoi(port));
            return;
        }
        if (!port.empty() && port.find_first_not_of("0123456789") == std::string::npos) {
            port_ = static_cast<uint16_t>(std::stoi(port));
            return;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    throw std::runtime_error("fake_apiserver.py did not write its port:\n" + log());
}

void FakeServer::stop() noexcept {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    int status;
    for (int i = 0; i < 300; ++i) {
        if (::waitpid(pid_, &status, WNOHANG) == pid_) {
            pid_ = -1;
            return;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ::kill(pid_, SIGKILL);
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
}

k8s::ClusterConfig FakeServer::config() const {
    k8s::ClusterConfig config;
    config.server = url();
    config.ca_file = (dir_ / "ca.crt").string();
    config.token_file = (dir_ / "client-token").string();
    config.source = "test fake API server";
    return config;
}

nlohmann::json FakeServer::control(const std::string& path, const nlohmann::json& body) {
    CURL* curl = curl_easy_init();
    if (!curl) throw std::runtime_error("curl_easy_init failed");
    const std::string target = url() + "/_fake/" + path, payload = body.is_null() ? "" : body.dump();
    const std::string ca = (dir_ / "ca.crt").string();
    std::string response;
    curl_slist* headers = curl_slist_append(nullptr, "Content-Type: application/json");
    curl_easy_setopt(curl, CURLOPT_URL, target.c_str());
    curl_easy_setopt(curl, CURLOPT_CAINFO, ca.c_str());
    curl_easy_setopt(curl, CURLOPT_PROXY, "");
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 10000L);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    if (!body.is_null()) curl_easy_setopt(curl, CURLOPT_POSTFIELDS, payload.c_str());
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, &append);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &response);
    const CURLcode code = curl_easy_perform(curl);
    long status = 0;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(headers);
    curl_easy_cleanup(curl);
    if (code != CURLE_OK || status != 200)
        throw std::runtime_error("/_fake/" + path + ": " + curl_easy_strerror(code) + " HTTP " +
                                 std::to_string(status) + " " + response);
    return nlohmann::json::parse(response, nullptr, false);
}

void FakeServer::upsert(const nlohmann::json& object) {
    const nlohmann::json result = control("objects", {{"op", "upsert"}, {"object", object}});
    for (const auto& r : result.value("results", nlohmann::json::array()))
        if (r.value("code", 0) >= 300) throw std::runtime_error("upsert failed: " + result.dump());
}

void FakeServer::remove(const std::string& api_version, const std::string& kind, const std::string& ns,
                        const std::string& name) {
    control("objects",
            {{"op", "delete"}, {"apiVersion", api_version}, {"kind", kind}, {"namespace", ns}, {"name", name}});
}

std::vector<nlohmann::json> FakeServer::requests(const std::string& verb) {
    std::vector<nlohmann::json> out;
    const nlohmann::json all = control("requests");  // named: a temporary's member would dangle in the loop
    for (const auto& r : all.value("requests", nlohmann::json::array()))
        if (verb.empty() || r.value("verb", "") == verb) out.push_back(r);
    return out;
}

void FakeServer::rotate_token(const std::string& token) {
    dir_.write("client-token", token + "\n");
    control("token", {{"token", token}});
}

std::string FakeServer::log() const { return slurp(dir_ / "server.out") + slurp(dir_ / "server.log"); }

bool wait_until(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!done()) {
        if (std::chrono::steady_clock::now() >= deadline) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return true;
}

nlohmann::json pod(const std::string& name, const std::string& node) {
    return {{"apiVersion", "v1"},
            {"kind", "Pod"},
            {"metadata", {{"name", name}, {"namespace", "default"}}},
            {"spec", {{"nodeName", node}, {"containers", {{{"name", "c"}, {"image", "busybox"}}}}}}};
}

}  // namespace egressd::k8stest
