// Reading YAML with positions: typed access to fields with their path, and
// errors worded alike ("<file>:<line>:<column>: <path>: <why>") by every
// parser of the core (meshconfig.cc, agent_config.cc, yaml_edit.cc,
// egress_policy.cc).
#pragma once

#include <filesystem>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <yaml-cpp/yaml.h>

#include "common/result.h"
#include "core/net.h"

namespace egressd {

// Internal to the core's YAML parsers (meshconfig.cc, agent_config.cc,
// yaml_edit.cc, egress_policy.cc), so that they check types and word their
// errors alike.
namespace yaml_input {

// Thrown only inside those parsers; each turns it into an Error at its edge.
struct ParseError {
    std::string message;
};

// true/True/TRUE/false/False/FALSE (YAML 1.2 core schema), else nullopt.
std::optional<bool> bool_word(std::string_view text);

// A value in a document with its field path. Every failure throws ParseError
// with the message "<file>:<line>:<column>: <path>: <why>" (1-based).
class Field {
public:
    // Exactly one document, whose top level is a mapping. Syntax errors keep
    // yaml-cpp's position.
    static Field load(std::string_view text, const std::string& file_name);
    // Every document of a "---"-separated stream, in order, whatever its top level is (an empty
    // document is null). A syntax error anywhere fails the whole text, with yaml-cpp's position.
    static std::vector<Field> load_all(std::string_view text, const std::string& file_name);

    // yaml-cpp's Node assignment rewrites the node it refers to: copy only.
    Field(const Field&) = default;
    Field& operator=(const Field&) = delete;

    bool present() const { return node_.IsDefined() && !node_.IsNull(); }
    bool is_null() const { return node_.IsDefined() && node_.IsNull(); }
    const YAML::Node& node() const { return node_; }
    const YAML::Node& key() const { return key_; }  // undefined for the top level and list items
    const std::string& path() const { return path_; }

    std::string message(std::string_view why) const;  // what fail() throws, for notes that do not fail
    [[noreturn]] void fail(std::string_view why) const;
    [[noreturn]] void fail_expected(std::string_view expected) const;  // "expected <expected>, got <what it is>"

    // Members of a mapping (block or flow). Absent or null: no members.
    Field child(std::string_view key) const;     // absent when missing; a duplicate key fails
    Field required(std::string_view key) const;  // missing fails "required field is missing"
    void reject_unknown_keys(std::initializer_list<std::string_view> known) const;

    std::vector<Field> items() const;  // a list; absent or null is empty
    bool boolean() const;              // an unquoted bool_word
    long long integer() const;         // an unquoted decimal integer
    std::string string() const;        // any scalar
    std::vector<Cidr> cidrs() const;   // a list of strings Cidr::parse accepts; absent or null is empty

private:
    Field(std::string file, std::string path, YAML::Node node, YAML::Node key, YAML::Mark mark)
        : file_(std::move(file)), path_(std::move(path)), node_(std::move(node)), key_(std::move(key)), mark_(mark) {}
    void expect_mapping() const;

    std::string file_;
    std::string path_;  // "" for the top level
    YAML::Node node_;
    YAML::Node key_;
    YAML::Mark mark_;  // where messages point: the value, its key when null, the mapping when absent
};

}  // namespace yaml_input
}  // namespace egressd
