// Helpers shared by the unit tests.
#pragma once

#include <string>

namespace egressd::test {

// A result's error for a check message, "" when it succeeded: doctest builds
// messages of passing checks too (with -s), and error() of a good result throws.
template <typename R>
std::string why(const R& result) {
    return result.ok() ? std::string() : result.error().describe();
}

}  // namespace egressd::test
