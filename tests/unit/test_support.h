// Helpers shared by the unit tests.
#pragma once

#include <doctest/doctest.h>

#include <initializer_list>
#include <string>
#include <vector>

#include "core/net.h"

namespace egressd::test {

// A result's error for a check message, "" when it succeeded: doctest builds
// messages of passing checks too (with -s), and error() of a good result throws.
template <typename R>
std::string why(const R& result) {
    return result.ok() ? std::string() : result.error().describe();
}

// CIDRs from their texts (each must parse).
inline std::vector<Cidr> cidrs(std::initializer_list<const char*> texts) {
    std::vector<Cidr> parsed;
    for (const char* text : texts) {
        auto cidr = Cidr::parse(text);
        REQUIRE_MESSAGE(cidr.ok(), why(cidr));
        parsed.push_back(*cidr);
    }
    return parsed;
}

// The texts of CIDRs, to compare with a list of strings.
inline std::vector<std::string> cidr_texts(const std::vector<Cidr>& list) {
    std::vector<std::string> texts;
    for (const Cidr& cidr : list) texts.push_back(cidr.str());
    return texts;
}

}  // namespace egressd::test
