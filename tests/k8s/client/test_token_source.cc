// The bearer token: a file is re-read after a 401 (invalidate) or 60 s, not per request.
#include <doctest/doctest.h>

#include "k8s/http_client.h"
#include "temp_dir.h"

namespace egressd::k8s {

TEST_CASE("token source: static token, or a file cached until invalidated") {
    ClusterConfig fixed;
    fixed.token = "static";
    TokenSource static_source(fixed);
    CHECK_FALSE(static_source.from_file());
    CHECK(*static_source.token() == "static");

    k8stest::TempDir dir;
    ClusterConfig config;
    config.token_file = dir.write("token", "one\n").string();
    TokenSource source(config);
    CHECK(source.from_file());
    CHECK(*source.token() == "one");
    dir.write("token", "two\n");
    CHECK(*source.token() == "one");  // within the 60 s
    source.invalidate();
    CHECK(*source.token() == "two");
    dir.write("token", "");
    source.invalidate();
    CHECK(*source.token() == "two");  // an empty file keeps the previous token

    ClusterConfig absent;
    absent.token_file = (dir / "absent").string();
    TokenSource missing(absent);
    CHECK_FALSE(missing.token().ok());
}

}  // namespace egressd::k8s
