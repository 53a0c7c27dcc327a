// A watched collection: its URLs, the discovery of its served version, and
// its paginated LIST.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "common/result.h"
#include "k8s/http_client.h"

namespace egressd::k8s {

struct Resource {
    std::string group;           // "" for the core group (/api/v1), else e.g. "config.flomesh.io"
    std::string version;         // "" = discover: GET /apis/<group>, take preferredVersion (or the first served)
    std::string plural;          // "pods", "namespaces", "egresses", "meshconfigs", "nodes"
    std::string namespace_;      // "" = all namespaces
    std::string field_selector;  // e.g. "spec.nodeName=node-1" (URL-encoded when used)
    std::string label_selector;
    // "egresses.policy.flomesh.io/v1alpha1", "pods/v1"; without "/version" when not chosen.
    std::string describe() const;
};

// Percent-encodes all but the RFC 3986 unreserved characters.
std::string query_escape(std::string_view text);
// "/api/v1[/namespaces/NS]/PLURAL" or "/apis/GROUP/VERSION[/namespaces/NS]/PLURAL".
std::string collection_path(const Resource& resource, const std::string& version);
// A LIST page: limit (0 = none), continue and the selectors.
std::string list_path(const Resource& resource, const std::string& version, uint32_t limit,
                      const std::string& continue_token);
// A WATCH from `resource_version` with bookmarks, ended by the server after `timeout`.
std::string watch_path(const Resource& resource, const std::string& version, const std::string& resource_version,
                       std::chrono::seconds timeout);

// The message of a failed request: its Status's message, else the start of the body.
std::string failure_message(const HttpResponse& response);

// What the API server answered when it did not answer 200.
struct ApiFailure {
    long status = 0;
    std::string message;
    std::optional<double> retry_after_seconds;
};

struct Discovery {
    std::string version;                // "" when failure.status is set
    std::optional<ApiFailure> failure;  // 404: the group is not served
};
// The version of resource.group to use: preferredVersion, else the first
// served one; "v1" for the core group without a request.
Result<Discovery> discover_version(Client& client, const Resource& resource, std::chrono::milliseconds timeout,
                                   const std::atomic<bool>* stop);

// What a reflector keeps of each object, like client-go's TransformFunc: it
// runs on every listed object and on every watch event's object before the
// object is stored, so that a full object never outlives its page or event.
// It must keep metadata.name and metadata.namespace (the store's key).
// Empty: the whole object is kept.
using ObjectTransform = std::function<nlohmann::json(nlohmann::json&&)>;

struct ListResult {
    std::optional<ApiFailure> failure;  // 404: not served; 429/5xx...: retry later
    std::string resource_version;
    std::map<std::string, nlohmann::json> items;  // by object_key()
    unsigned pages = 0;
    bool continue_expired = false;  // a continue token expired (410): listed again, unpaginated
};
// All pages of the collection, `page_size` objects per request (0 = one
// request). A 410 on a continue page starts over with one unpaginated LIST.
// Each item is stored as `transform` returns it. `after_page` (tests) runs
// after each page that has a next one.
Result<ListResult> list_collection(Client& client, const Resource& resource, const std::string& version,
                                   uint32_t page_size, std::chrono::milliseconds timeout, const std::atomic<bool>* stop,
                                   const ObjectTransform& transform = {},
                                   const std::function<void(unsigned pages)>& after_page = {});

}  // namespace egressd::k8s
