// The reflector's backoff: 0.8 s doubling to 30 s, jittered down by at most 20 %.
#include <doctest/doctest.h>

#include "k8s/reflector.h"

namespace egressd::k8s {

using std::chrono::milliseconds;

TEST_CASE("backoff: doubling from 800 ms, capped at 30 s, reset to the start") {
    for (uint64_t seed = 0; seed < 50; ++seed) {
        Backoff backoff(milliseconds(800), milliseconds(30000), seed);
        int64_t nominal = 800;
        for (int i = 0; i < 12; ++i) {
            const int64_t delay = backoff.next().count();
            CAPTURE(seed);
            CAPTURE(i);
            CHECK(delay <= nominal);
            CHECK(delay >= nominal * 8 / 10);
            CHECK(delay <= 30000);
            nominal = std::min<int64_t>(nominal * 2, 30000);
        }
        CHECK(nominal == 30000);
        backoff.reset();
        const int64_t first = backoff.next().count();
        CHECK(first <= 800);
        CHECK(first >= 640);
    }
}

TEST_CASE("backoff: jitter spreads the delays") {
    Backoff a(milliseconds(800), milliseconds(30000), 1), b(milliseconds(800), milliseconds(30000), 2);
    bool differ = false;
    for (int i = 0; i < 5; ++i) differ |= a.next() != b.next();
    CHECK(differ);
}

}  // namespace egressd::k8s
