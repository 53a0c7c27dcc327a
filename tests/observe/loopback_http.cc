#include "loopback_http.h"

#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace egressd::testhttp {

long long elapsed_ms(Clock::time_point since) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - since).count();
}

sockaddr_storage loopback(int family, uint16_t port, socklen_t& length) {
    sockaddr_storage storage{};
    if (family == AF_INET) {
        auto& sin = reinterpret_cast<sockaddr_in&>(storage);
        sin.sin_family = AF_INET;
        sin.sin_port = htons(port);
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        length = sizeof sin;
    } else {
        auto& sin6 = reinterpret_cast<sockaddr_in6&>(storage);
        sin6.sin6_family = AF_INET6;
        sin6.sin6_port = htons(port);
        sin6.sin6_addr = in6addr_loopback;
        length = sizeof sin6;
    }
    return storage;
}

// A connected socket to the loopback address of `family`; invalid if refused
// (the errno in *error).
UniqueFd connect_loopback(uint16_t port, int family, int* error) {
    UniqueFd fd(::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0));
    REQUIRE(fd.valid());
    timeval timeout{5, 0};
    ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    socklen_t length = 0;
    const sockaddr_storage address = loopback(family, port, length);
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&address), length) != 0) {
        if (error != nullptr) *error = errno;
        return UniqueFd();
    }
    return fd;
}

void send_all(int fd, const std::string& data) {
    size_t sent = 0;
    while (sent < data.size()) {
        const ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
        REQUIRE(n > 0);
        sent += static_cast<size_t>(n);
    }
}

std::string read_to_eof(int fd) {
    std::string data;
    char buffer[4096];
    while (true) {
        const ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
        const int error = errno;
        if (n <= 0) {
            REQUIRE_MESSAGE(n == 0, "recv: " << std::strerror(error));  // EAGAIN: the 5 s timeout
            return data;
        }
        data.append(buffer, static_cast<size_t>(n));
    }
}

Reply parse_reply(const std::string& raw) {
    Reply reply;
    const auto head_end = raw.find("\r\n\r\n");
    REQUIRE_MESSAGE(head_end != std::string::npos, raw);
    const std::string head = raw.substr(0, head_end);
    reply.body = raw.substr(head_end + 4);
    REQUIRE(head.rfind("HTTP/1.1 ", 0) == 0);
    reply.status = std::stoi(head.substr(9, 3));
    size_t start = head.find("\r\n");
    while (start != std::string::npos) {
        start += 2;
        const size_t end = head.find("\r\n", start);
        const std::string line = head.substr(start, end == std::string::npos ? std::string::npos : end - start);
        const auto colon = line.find(':');
        REQUIRE(colon != std::string::npos);
        std::string name = line.substr(0, colon);
        for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        reply.headers[name] = line.substr(line.find_first_not_of(' ', colon + 1));
        start = end;
    }
    return reply;
}

Reply request(uint16_t port, const std::string& method, const std::string& target, int family) {
    int error = 0;
    UniqueFd fd = connect_loopback(port, family, &error);
    REQUIRE_MESSAGE(fd.valid(), "connect: " << std::strerror(error));
    send_all(fd.get(), method + " " + target + " HTTP/1.1\r\nHost: localhost\r\n\r\n");
    return parse_reply(read_to_eof(fd.get()));
}

Reply get(uint16_t port, const std::string& target) { return request(port, "GET", target); }

}  // namespace egressd::testhttp
