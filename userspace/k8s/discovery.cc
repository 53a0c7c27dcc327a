#include "k8s/discovery.h"

#include <curl/curl.h>

#include "k8s/line_framer.h"

namespace egressd::k8s {

namespace {

constexpr size_t kMaxMessage = 300;

void add_param(std::string& path, const char* name, const std::string& value) {
    path += path.find('?') == std::string::npos ? '?' : '&';
    path += name;
    path += '=';
    path += query_escape(value);
}

void add_selectors(std::string& path, const Resource& resource) {
    if (!resource.field_selector.empty()) add_param(path, "fieldSelector", resource.field_selector);
    if (!resource.label_selector.empty()) add_param(path, "labelSelector", resource.label_selector);
}

ApiFailure failure_of(const HttpResponse& response) {
    return ApiFailure{response.status, failure_message(response), response.retry_after_seconds};
}

// One page into `out`; returns the continue token.
Result<std::string> read_page(const std::string& body, const ObjectTransform& transform, ListResult& out) {
    // With a transform, each item is cut down as soon as it is parsed: a page
    // of 500 whole pods (several MB of objects) never exists at once. An
    // item is an object ending at depth 2: List.items[i] (a List has no
    // other array at the top).
    nlohmann::json::parser_callback_t cut_items = nullptr;
    if (transform)
        cut_items = [&transform](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
            if (event == nlohmann::json::parse_event_t::object_end && depth == 2)
                parsed = transform(std::move(parsed));
            return true;
        };
    nlohmann::json list = nlohmann::json::parse(body, cut_items, false);
    if (list.is_discarded() || !list.is_object()) return make_error("the list is not a JSON object");
    const auto items = list.find("items");
    if (items != list.end() && !items->is_null()) {
        if (!items->is_array()) return make_error("the list's items are not an array");
        for (auto& item : *items) {
            std::string key = object_key(item);
            if (key.empty()) continue;
            out.items[std::move(key)] = std::move(item);  // already cut down by the transform, if any
        }
    }
    const auto metadata = list.find("metadata");
    if (metadata == list.end() || !metadata->is_object()) return make_error("the list has no metadata");
    out.resource_version = metadata->value("resourceVersion", std::string());
    if (out.resource_version.empty()) return make_error("the list has no metadata.resourceVersion");
    ++out.pages;
    return metadata->value("continue", std::string());
}

}  // namespace

std::string Resource::describe() const {
    std::string text = group.empty() ? plural : plural + "." + group;
    if (!version.empty()) text += "/" + version;
    return text;
}

std::string query_escape(std::string_view text) {
    char* escaped = curl_easy_escape(nullptr, text.data(), static_cast<int>(text.size()));
    if (!escaped) return "";
    std::string out(escaped);
    curl_free(escaped);
    return out;
}

std::string collection_path(const Resource& resource, const std::string& version) {
    std::string path = resource.group.empty() ? "/api/" + version : "/apis/" + resource.group + "/" + version;
    if (!resource.namespace_.empty()) path += "/namespaces/" + query_escape(resource.namespace_);
    return path + "/" + resource.plural;
}

std::string list_path(const Resource& resource, const std::string& version, uint32_t limit,
                      const std::string& continue_token) {
    std::string path = collection_path(resource, version);
    if (limit > 0) add_param(path, "limit", std::to_string(limit));
    if (!continue_token.empty()) add_param(path, "continue", continue_token);
    add_selectors(path, resource);
    return path;
}

std::string watch_path(const Resource& resource, const std::string& version, const std::string& resource_version,
                       std::chrono::seconds timeout) {
    std::string path = collection_path(resource, version) + "?watch=1";
    add_param(path, "resourceVersion", resource_version);
    add_param(path, "allowWatchBookmarks", "true");
    add_param(path, "timeoutSeconds", std::to_string(timeout.count()));
    add_selectors(path, resource);
    return path;
}

std::string failure_message(const HttpResponse& response) {
    std::string message = "HTTP " + std::to_string(response.status);
    const nlohmann::json body = nlohmann::json::parse(response.body, nullptr, false);
    std::string detail = body.is_object() ? status_message(body) : response.body.substr(0, kMaxMessage);
    while (!detail.empty() && (detail.back() == '\n' || detail.back() == '\r')) detail.pop_back();
    return detail.empty() ? message : message + ": " + detail;
}

Result<Discovery> discover_version(Client& client, const Resource& resource, std::chrono::milliseconds timeout,
                                   const std::atomic<bool>* stop) {
    if (!resource.version.empty()) return Discovery{resource.version, std::nullopt};
    if (resource.group.empty()) return Discovery{"v1", std::nullopt};
    auto response = client.get("/apis/" + resource.group, timeout, stop);
    if (!response) return response.error();
    if (response->status != 200) return Discovery{"", failure_of(*response)};
    const nlohmann::json group = nlohmann::json::parse(response->body, nullptr, false);
    if (!group.is_object()) return make_error("GET /apis/" + resource.group + ": not a JSON object");
    const auto preferred = group.find("preferredVersion");
    if (preferred != group.end() && preferred->is_object()) {
        std::string version = preferred->value("version", std::string());
        if (!version.empty()) return Discovery{std::move(version), std::nullopt};
    }
    const auto versions = group.find("versions");
    if (versions != group.end() && versions->is_array())
        for (const auto& entry : *versions)
            if (entry.is_object() && !entry.value("version", std::string()).empty())
                return Discovery{entry.value("version", std::string()), std::nullopt};
    return Discovery{"", ApiFailure{404, "the group " + resource.group + " serves no version", std::nullopt}};
}

Result<ListResult> list_collection(Client& client, const Resource& resource, const std::string& version,
                                   uint32_t page_size, std::chrono::milliseconds timeout, const std::atomic<bool>* stop,
                                   const ObjectTransform& transform,
                                   const std::function<void(unsigned pages)>& after_page) {
    ListResult result;
    std::string continue_token;
    for (;;) {
        const std::string path = list_path(resource, version, page_size, continue_token);
        auto response = client.get(path, timeout, stop);
        if (!response) return response.error();
        if (response->status == 410 && !continue_token.empty()) {
            // The token expired (etcd compacted): one unpaginated LIST, as
            // client-go's pager does, so that a slow reader cannot loop.
            result = ListResult{};
            result.continue_expired = true;
            continue_token.clear();
            page_size = 0;
            continue;
        }
        if (response->status != 200) {
            result.failure = failure_of(*response);
            return result;
        }
        auto next = read_page(response->body, transform, result);
        if (!next) return next.error().with_context("GET " + path);
        if (next->empty()) return result;
        continue_token = std::move(*next);
        if (after_page) after_page(result.pages);
    }
}

}  // namespace egressd::k8s
