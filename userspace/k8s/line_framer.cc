#include "k8s/line_framer.h"

#include <array>
#include <utility>

namespace egressd::k8s {

namespace {

std::string_view without_cr(std::string_view line) {
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    return line;
}

const nlohmann::json* member(const nlohmann::json& object, const char* key) {
    if (!object.is_object()) return nullptr;
    const auto it = object.find(key);
    return it == object.end() ? nullptr : &*it;
}

std::string string_member(const nlohmann::json& object, const char* key) {
    const nlohmann::json* value = member(object, key);
    return value && value->is_string() ? value->get<std::string>() : std::string();
}

}  // namespace

Status LineFramer::feed(std::string_view data, const std::function<bool(std::string_view)>& on_line) {
    size_t start = 0;
    // Search only the new bytes: a long line in small chunks stays linear.
    for (size_t nl = data.find('\n'); nl != std::string_view::npos; nl = data.find('\n', start)) {
        std::string_view line = data.substr(start, nl - start);
        start = nl + 1;
        if (buffer_.size() + line.size() > max_line_) return too_long();
        if (!buffer_.empty()) {
            buffer_.append(line);
            line = buffer_;
        }
        const std::string_view text = without_cr(line);
        const bool more = text.empty() || on_line(text);
        buffer_.clear();
        if (!more) return {};
    }
    const std::string_view rest = data.substr(start);
    if (buffer_.size() + rest.size() > max_line_) return too_long();
    buffer_.append(rest);
    return {};
}

Status LineFramer::too_long() {
    buffer_.clear();
    return make_error("watch event longer than " + std::to_string(max_line_) + " bytes");
}

Result<WatchEvent> parse_watch_event(std::string_view line) {
    static constexpr std::array<std::pair<const char*, WatchEvent::Type>, 5> kTypes = {{
        {"ADDED", WatchEvent::Type::kAdded},
        {"MODIFIED", WatchEvent::Type::kModified},
        {"DELETED", WatchEvent::Type::kDeleted},
        {"BOOKMARK", WatchEvent::Type::kBookmark},
        {"ERROR", WatchEvent::Type::kError},
    }};
    nlohmann::json json = nlohmann::json::parse(line, nullptr, false);
    if (json.is_discarded() || !json.is_object()) return make_error("watch event is not a JSON object");
    const std::string type = string_member(json, "type");
    const nlohmann::json* object = member(json, "object");
    if (!object || !object->is_object()) return make_error("watch event " + type + " has no object");
    for (const auto& [name, value] : kTypes)
        if (type == name) return WatchEvent{value, std::move(json["object"])};
    return make_error("unknown watch event type \"" + type + "\"");
}

std::string object_key(const nlohmann::json& object) {
    const nlohmann::json* metadata = member(object, "metadata");
    if (!metadata) return "";
    const std::string name = string_member(*metadata, "name");
    const std::string ns = string_member(*metadata, "namespace");
    if (name.empty() || ns.empty()) return name;
    return ns + "/" + name;
}

std::string resource_version_of(const nlohmann::json& object) {
    const nlohmann::json* metadata = member(object, "metadata");
    return metadata ? string_member(*metadata, "resourceVersion") : std::string();
}

long status_code(const nlohmann::json& object) {
    const nlohmann::json* code = member(object, "code");
    return code && code->is_number_integer() ? code->get<long>() : 0;
}

bool is_expired_status(const nlohmann::json& status) {
    const long code = status_code(status);
    if (code == 410) return true;
    if (code != 504) return false;
    if (status_message(status).find("oo large resource version") != std::string::npos) return true;
    const nlohmann::json* details = member(status, "details");
    const nlohmann::json* causes = details ? member(*details, "causes") : nullptr;
    if (causes && causes->is_array())
        for (const auto& cause : *causes)
            if (string_member(cause, "reason") == "ResourceVersionTooLarge") return true;
    return false;
}

std::string status_message(const nlohmann::json& object) {
    std::string message = string_member(object, "message");
    if (message.empty()) message = string_member(object, "reason");
    return message;
}

}  // namespace egressd::k8s
