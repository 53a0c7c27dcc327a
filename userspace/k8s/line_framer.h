// Watch streams: newline-delimited JSON events, split by the transport at any
// byte. The framer buffers a partial line until its '\n' arrives.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "common/result.h"

namespace egressd::k8s {

class LineFramer {
public:
    // Objects are at most ~1.5 MiB in etcd; a longer line is a broken stream.
    static constexpr size_t kDefaultMaxLine = 16u << 20;
    explicit LineFramer(size_t max_line = kDefaultMaxLine) : max_line_(max_line) {}

    // Appends `data` and calls `on_line` for each complete line (without '\n'
    // or a trailing '\r'; empty lines skipped) until it returns false. A line
    // longer than the maximum is an error and empties the buffer.
    Status feed(std::string_view data, const std::function<bool(std::string_view)>& on_line);
    // Bytes of a partial line waiting for its end.
    size_t buffered() const { return buffer_.size(); }
    void reset() { buffer_.clear(); }

private:
    Status too_long();

    size_t max_line_;
    std::string buffer_;
};

struct WatchEvent {
    enum class Type { kAdded, kModified, kDeleted, kBookmark, kError };
    Type type = Type::kAdded;
    nlohmann::json object;
};

// One line of a watch stream: {"type": ..., "object": {...}}.
Result<WatchEvent> parse_watch_event(std::string_view line);

// "namespace/name", or "name" for a cluster-scoped object; "" without a name.
std::string object_key(const nlohmann::json& object);
// metadata.resourceVersion, "" when absent.
std::string resource_version_of(const nlohmann::json& object);
// The code of a Status object (an ERROR event's object), 0 when there is none.
long status_code(const nlohmann::json& object);
// The resourceVersion cannot be served: 410 Gone/Expired, or the 504 for a
// version newer than the server's ("Too large resource version"). Both relist.
bool is_expired_status(const nlohmann::json& status);
// A Status object's message (or reason), for logs.
std::string status_message(const nlohmann::json& object);

}  // namespace egressd::k8s
