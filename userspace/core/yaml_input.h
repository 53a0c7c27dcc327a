// Reading YAML with positions: typed access to fields with their path, and
// errors worded alike ("<file>:<line>:<column>: <path>: <why>") by every
// parser of the core (meshconfig.cc, agent_config.cc, yaml_edit.cc,
// egress_policy.cc, workloads.cc) and the kubeconfig reader.
#pragma once

#include <filesystem>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/result.h"
#include "core/net.h"

namespace egressd {

// Internal to the YAML parsers named above, so that they check types and
// word their errors alike.
namespace yaml_input {

// Thrown only inside those parsers; each turns it into an Error at its edge.
struct ParseError {
    std::string message;
};

// true/True/TRUE/false/False/FALSE (YAML 1.2 core schema), else nullopt.
std::optional<bool> bool_word(std::string_view text);

// Where a node starts: 0-based line and column (in characters), and the byte
// offset in the text as given (a byte order mark included).
struct Mark {
    size_t offset = 0;
    size_t line = 0;
    size_t column = 0;
};

// One node of a parsed document (libyaml's events composed into a tree). An
// alias is the anchored node itself, shared: its mark is the anchor's.
struct Node {
    enum class Kind { undefined, null, scalar, sequence, mapping };
    Kind kind = Kind::undefined;
    // Scalars: the text, and the tag: "?" for a plain scalar without one,
    // "!" for any other style without one (a string, whatever its text),
    // else the resolved tag ("tag:yaml.org,2002:str" for "!!str").
    std::string scalar;
    std::string tag;
    bool flow = false;  // a flow-style mapping or list ({...}, [...])
    Mark mark;
    std::vector<std::shared_ptr<const Node>> items;                                             // a list
    std::vector<std::pair<std::shared_ptr<const Node>, std::shared_ptr<const Node>>> entries;  // a mapping, in order

    bool defined() const { return kind != Kind::undefined; }
    bool is_null() const { return kind == Kind::null; }
    bool is_scalar() const { return kind == Kind::scalar; }
    bool is_sequence() const { return kind == Kind::sequence; }
    bool is_mapping() const { return kind == Kind::mapping; }
};
using NodePtr = std::shared_ptr<const Node>;

// A value in a document with its field path. Every failure throws ParseError
// with the message "<file>:<line>:<column>: <path>: <why>" (1-based).
class Field {
public:
    // Exactly one document, whose top level is a mapping.
    static Field load(std::string_view text, const std::string& file_name);
    // Every document of a "---"-separated stream, in order, whatever its top
    // level is (an empty document is null). A syntax error anywhere fails the
    // whole text, at the parser's position.
    static std::vector<Field> load_all(std::string_view text, const std::string& file_name);

    bool present() const { return node_->defined() && !node_->is_null(); }
    bool is_null() const { return node_->is_null(); }
    const Node& node() const { return *node_; }
    const Node& key() const { return *key_; }  // undefined for the top level and list items
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
    Field(std::shared_ptr<const std::string> file, std::string path, NodePtr node, NodePtr key, Mark mark)
        : file_(std::move(file)), path_(std::move(path)), node_(std::move(node)), key_(std::move(key)), mark_(mark) {}
    void expect_mapping() const;

    std::shared_ptr<const std::string> file_;
    std::string path_;  // "" for the top level
    NodePtr node_;
    NodePtr key_;
    Mark mark_;  // where messages point: the value, its key when null, the mapping when absent
};

}  // namespace yaml_input
}  // namespace egressd
