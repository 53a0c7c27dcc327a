// URLs of collections, LIST pages and WATCHes; selectors URL-encoded.
#include <doctest/doctest.h>

#include "k8s/discovery.h"

namespace egressd::k8s {

TEST_CASE("urls: core and group collections, namespaced or not") {
    Resource pods{.plural = "pods"};
    CHECK(collection_path(pods, "v1") == "/api/v1/pods");
    CHECK(pods.describe() == "pods");
    Resource egresses{.group = "policy.flomesh.io", .version = "v1alpha1", .plural = "egresses"};
    CHECK(collection_path(egresses, "v1alpha1") == "/apis/policy.flomesh.io/v1alpha1/egresses");
    CHECK(egresses.describe() == "egresses.policy.flomesh.io/v1alpha1");
    Resource mesh{.group = "config.flomesh.io", .plural = "meshconfigs", .namespace_ = "fsm-system"};
    CHECK(collection_path(mesh, "v1alpha3") == "/apis/config.flomesh.io/v1alpha3/namespaces/fsm-system/meshconfigs");
}

TEST_CASE("urls: list pages and watches with encoded selectors") {
    Resource pods{.plural = "pods", .field_selector = "spec.nodeName=node-1", .label_selector = "app in (a,b),!x"};
    CHECK(list_path(pods, "v1", 500, "") ==
          "/api/v1/pods?limit=500&fieldSelector=spec.nodeName%3Dnode-1&labelSelector=app%20in%20%28a%2Cb%29%2C%21x");
    CHECK(list_path(pods, "v1", 0, "") ==
          "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-1&labelSelector=app%20in%20%28a%2Cb%29%2C%21x");
    Resource plain{.plural = "namespaces"};
    CHECK(list_path(plain, "v1", 2, "eyJ2IjoiMSJ9+/=") == "/api/v1/namespaces?limit=2&continue=eyJ2IjoiMSJ9%2B%2F%3D");
    CHECK(list_path(plain, "v1", 0, "") == "/api/v1/namespaces");
    CHECK(watch_path(pods, "v1", "123", std::chrono::seconds(300)) ==
          "/api/v1/pods?watch=1&resourceVersion=123&allowWatchBookmarks=true&timeoutSeconds=300"
          "&fieldSelector=spec.nodeName%3Dnode-1&labelSelector=app%20in%20%28a%2Cb%29%2C%21x");
    CHECK(query_escape("a-b_c.d~e") == "a-b_c.d~e");
    CHECK(query_escape("metadata.name!=x y&z") == "metadata.name%21%3Dx%20y%26z");
}

TEST_CASE("failure messages come from the Status, else the body") {
    HttpResponse status{404,
                        R"({"kind":"Status","message":"the server could not find the requested resource",)"
                        R"("reason":"NotFound","code":404})",
                        {}};
    CHECK(failure_message(status) == "HTTP 404: the server could not find the requested resource");
    HttpResponse text{502, "bad gateway\n", {}};
    CHECK(failure_message(text) == "HTTP 502: bad gateway");
    HttpResponse empty{500, "", {}};
    CHECK(failure_message(empty) == "HTTP 500");
}

}  // namespace egressd::k8s
