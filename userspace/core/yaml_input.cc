#include "core/yaml_input.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>

#include <sstream>

#include <fmt/format.h>
#include <yaml-cpp/eventhandler.h>

namespace egressd {

namespace yaml_input {

namespace {

// What a missing key, or the top level's key, holds.
YAML::Node undefined() { return YAML::Node(YAML::NodeType::Undefined); }

// yaml-cpp's marks are 0-based; messages are 1-based.
std::string position(const std::string& file, const YAML::Mark& mark) {
    if (mark.is_null()) return file;
    return fmt::format("{}:{}:{}", file, mark.line + 1, mark.column + 1);
}

std::string describe(const YAML::Node& node) {
    switch (node.Type()) {
        case YAML::NodeType::Null: return "null";
        case YAML::NodeType::Sequence: return "a list";
        case YAML::NodeType::Map: return "a mapping";
        case YAML::NodeType::Scalar:
            // The non-specific tag "!" marks a quoted scalar: a string, whatever its text.
            if (node.Tag() == "!") return fmt::format("the string \"{}\"", node.Scalar());
            if (node.Tag() == "?") return fmt::format("\"{}\"", node.Scalar());
            return fmt::format("\"{}\" tagged {}", node.Scalar(), node.Tag());
        default: return "no value";
    }
}

// Plain (untagged, unquoted) scalars get the tag "?"; an explicit tag must name the type.
bool is_plain_or_tagged(const YAML::Node& node, std::string_view type) {
    return node.IsScalar() && (node.Tag() == "?" || node.Tag() == fmt::format("tag:yaml.org,2002:{}", type));
}

// yaml-cpp 0.7 (Debian 12's) takes a token that starts no node, such as a
// "," at the top level, for an empty document without consuming it: LoadAll
// then adds null documents until memory runs out (jbeder/yaml-cpp#1040, fixed
// in 0.8). A first pass over the events stops where a document starts where
// the previous one did: every other document starts further on.
class DocumentProgress final : public YAML::EventHandler {
public:
    void OnDocumentStart(const YAML::Mark& mark) override {
        if (started_ && mark.pos <= last_start_)
            throw YAML::ParserException(mark, "unexpected token: no YAML value starts here");
        started_ = true;
        last_start_ = mark.pos;
    }
    void OnDocumentEnd() override {}
    void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
    void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
    void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t, const std::string&) override {}
    void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
    void OnSequenceEnd() override {}
    void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
    void OnMapEnd() override {}

private:
    bool started_ = false;
    int last_start_ = 0;
};

void check_documents_progress(const std::string& text) {
    std::istringstream in(text);
    YAML::Parser parser(in);
    DocumentProgress progress;
    while (parser.HandleNextDocument(progress)) {
    }
}

}  // namespace

std::optional<bool> bool_word(std::string_view text) {
    if (text == "true" || text == "True" || text == "TRUE") return true;
    if (text == "false" || text == "False" || text == "FALSE") return false;
    return std::nullopt;
}

std::vector<Field> Field::load_all(std::string_view text, const std::string& file_name) {
    std::vector<YAML::Node> nodes;
    try {
        const std::string input(text);
        check_documents_progress(input);
        nodes = YAML::LoadAll(input);
    } catch (const YAML::Exception& e) {
        throw ParseError{fmt::format("{}: {}", position(file_name, e.mark), e.msg)};
    }
    std::vector<Field> documents;
    for (const YAML::Node& node : nodes) documents.push_back(Field(file_name, "", node, undefined(), node.Mark()));
    return documents;
}

Field Field::load(std::string_view text, const std::string& file_name) {
    std::vector<Field> documents;
    // A trailing "---" or a comment-only part yields a null document: not content.
    for (const Field& document : load_all(text, file_name))
        if (!document.is_null()) documents.push_back(document);
    if (documents.empty()) throw ParseError{fmt::format("{}:1:1: empty document", file_name)};
    if (documents.size() > 1) documents[1].fail("expected one YAML document, found a second one");
    if (!documents[0].node_.IsMap()) documents[0].fail_expected("a mapping at the top level");
    return documents[0];
}

std::string Field::message(std::string_view why) const {
    const std::string where = position(file_, mark_);
    return path_.empty() ? fmt::format("{}: {}", where, why) : fmt::format("{}: {}: {}", where, path_, why);
}

void Field::fail(std::string_view why) const { throw ParseError{message(why)}; }

void Field::fail_expected(std::string_view expected) const {
    fail(fmt::format("expected {}, got {}", expected, describe(node_)));
}

void Field::expect_mapping() const {
    if (!node_.IsMap()) fail_expected("a mapping");
}

Field Field::child(std::string_view key) const {
    const std::string child_path = path_.empty() ? std::string(key) : fmt::format("{}.{}", path_, key);
    std::optional<Field> found;
    if (present()) {
        expect_mapping();
        for (const auto& entry : node_) {
            if (!entry.first.IsScalar() || entry.first.Scalar() != key) continue;
            // yaml-cpp keeps duplicate keys; reading only one of them would hide the other.
            if (found)
                Field(file_, child_path, entry.second, entry.first, entry.first.Mark())
                    .fail(fmt::format("duplicate key (first at line {})", found->key_.Mark().line + 1));
            // A null value's mark points past it, at the next token: point at its key.
            const YAML::Mark mark = entry.second.IsNull() ? entry.first.Mark() : entry.second.Mark();
            found.emplace(Field(file_, child_path, entry.second, entry.first, mark));
        }
    }
    if (found) return *found;
    return Field(file_, child_path, undefined(), undefined(), mark_);
}

Field Field::required(std::string_view key) const {
    Field field = child(key);
    if (!field.node_.IsDefined()) field.fail("required field is missing");
    return field;
}

void Field::reject_unknown_keys(std::initializer_list<std::string_view> known) const {
    if (!present()) return;
    expect_mapping();
    for (const auto& entry : node_) {
        const std::string name = entry.first.IsScalar() ? entry.first.Scalar() : describe(entry.first);
        if (std::find(known.begin(), known.end(), name) != known.end()) continue;
        Field(file_, path_.empty() ? name : fmt::format("{}.{}", path_, name), entry.second, entry.first,
              entry.first.Mark())
            .fail(fmt::format("unknown key; expected one of {}", fmt::join(known, ", ")));
    }
}

std::vector<Field> Field::items() const {
    std::vector<Field> items;
    if (!present()) return items;
    if (!node_.IsSequence()) fail_expected("a list");
    for (const YAML::Node& item : node_) {
        // A null item's mark points past it; the list's own is the nearest truth.
        const YAML::Mark mark = item.IsNull() ? mark_ : item.Mark();
        items.push_back(Field(file_, fmt::format("{}[{}]", path_, items.size()), item, undefined(), mark));
    }
    return items;
}

bool Field::boolean() const {
    if (is_plain_or_tagged(node_, "bool"))
        if (auto value = bool_word(node_.Scalar())) return *value;
    fail_expected("a boolean (true or false)");
}

long long Field::integer() const {
    if (!is_plain_or_tagged(node_, "int")) fail_expected("an integer");
    const std::string& text = node_.Scalar();
    const std::string_view digits =
        std::string_view(text).substr(text.starts_with('-') || text.starts_with('+') ? 1 : 0);
    if (digits.empty() || !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
        fail_expected("an integer");
    // YAML 1.1 (Kubernetes' Go YAML) reads 0755 as octal, YAML 1.2 as decimal.
    if (digits.size() > 1 && digits[0] == '0')
        fail(fmt::format("integer {} has a leading zero (octal or decimal?)", text));
    long long value = 0;
    const char* first = text.data() + (text.starts_with('+') ? 1 : 0);
    if (std::from_chars(first, text.data() + text.size(), value).ec != std::errc())
        fail(fmt::format("integer {} is too large", text));
    return value;
}

std::string Field::string() const {
    if (!node_.IsScalar()) fail_expected("a string");
    return node_.Scalar();
}

std::vector<Cidr> Field::cidrs() const {
    std::vector<Cidr> cidrs;
    for (const Field& item : items()) {
        auto cidr = Cidr::parse(item.string());
        if (!cidr) item.fail(cidr.error().message);
        cidrs.push_back(*cidr);
    }
    return cidrs;
}

}  // namespace yaml_input

}  // namespace egressd
