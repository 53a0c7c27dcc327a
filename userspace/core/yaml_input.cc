#include "core/yaml_input.h"

#include <yaml.h>

#include <algorithm>
#include <charconv>
#include <map>

#include <fmt/format.h>

namespace egressd {

namespace yaml_input {

namespace {

constexpr std::string_view kUtf8Bom = "\xEF\xBB\xBF";
// Deeper nesting is refused: no input of ours nests past a dozen levels, and
// the tree is freed recursively.
constexpr size_t kMaxDepth = 256;

const NodePtr& undefined() {
    static const NodePtr none = std::make_shared<const Node>();
    return none;
}

// libyaml counts characters after a byte order mark; marks carry byte offsets
// in the text as given, which is what an editor of the text needs.
class Offsets {
public:
    explicit Offsets(std::string_view text)
        : text_(text), base_(text.starts_with(kUtf8Bom) ? kUtf8Bom.size() : 0), bytes_done_(base_) {
        ascii_ = std::all_of(text.begin() + static_cast<std::ptrdiff_t>(base_), text.end(),
                             [](char c) { return static_cast<unsigned char>(c) < 0x80; });
    }
    Mark mark(const yaml_mark_t& m) {
        return Mark{.offset = byte_offset(m.index), .line = m.line, .column = m.column};
    }

private:
    size_t byte_offset(size_t chars) {
        if (ascii_) return base_ + chars;
        // Walk on from the last answer (marks mostly come in order).
        if (chars < chars_done_) chars_done_ = 0, bytes_done_ = base_;
        while (chars_done_ < chars && bytes_done_ < text_.size()) {
            ++bytes_done_;
            while (bytes_done_ < text_.size() && (static_cast<unsigned char>(text_[bytes_done_]) & 0xC0) == 0x80)
                ++bytes_done_;
            ++chars_done_;
        }
        return bytes_done_;
    }

    std::string_view text_;
    size_t base_;
    bool ascii_ = true;
    size_t chars_done_ = 0;
    size_t bytes_done_;
};

std::string position(const std::string& file, const Mark& mark) {
    return fmt::format("{}:{}:{}", file, mark.line + 1, mark.column + 1);
}

// A plain scalar without a tag that YAML 1.2's core schema reads as null.
bool is_null_word(std::string_view text) {
    return text.empty() || text == "~" || text == "null" || text == "Null" || text == "NULL";
}

// The parser's events composed into documents: nodes, with anchors resolved
// to the anchored node.
class Composer {
public:
    Composer(std::string_view text, const std::string& file_name)
        : text_(text), offsets_(text), file_name_(file_name) {
        yaml_parser_initialize(&parser_);
        yaml_parser_set_input_string(&parser_, reinterpret_cast<const unsigned char*>(text.data()), text.size());
    }
    ~Composer() { yaml_parser_delete(&parser_); }
    Composer(const Composer&) = delete;
    Composer& operator=(const Composer&) = delete;

    std::vector<NodePtr> documents() {
        std::vector<NodePtr> documents;
        for (;;) {
            Event event(*this);
            switch (event.e.type) {
                case YAML_STREAM_END_EVENT: return documents;
                case YAML_DOCUMENT_START_EVENT: anchors_.clear(); break;
                case YAML_DOCUMENT_END_EVENT: documents.push_back(std::move(root_)); break;
                case YAML_ALIAS_EVENT: add(alias(event.e)); break;
                case YAML_SCALAR_EVENT: add(scalar(event.e)); break;
                case YAML_SEQUENCE_START_EVENT:
                case YAML_MAPPING_START_EVENT: open(event.e); break;
                case YAML_SEQUENCE_END_EVENT:
                case YAML_MAPPING_END_EVENT: close(); break;
                default: break;  // stream start, no event
            }
        }
    }

private:
    // One parsed event, freed when done with.
    struct Event {
        explicit Event(Composer& composer) {
            if (!yaml_parser_parse(&composer.parser_, &e)) composer.fail_syntax();
        }
        ~Event() { yaml_event_delete(&e); }
        yaml_event_t e{};
    };

    // A collection being filled, the key waiting for its value, and its
    // anchor: known to aliases once complete (an alias inside its own
    // anchored node would make a cycle).
    struct Open {
        std::shared_ptr<Node> node;
        NodePtr pending_key;
        std::string anchor;
    };

    [[noreturn]] void fail_syntax() {
        if (parser_.error == YAML_READER_ERROR) fail_encoding();
        const Mark mark = offsets_.mark(parser_.problem_mark);
        std::string why = parser_.problem ? parser_.problem : "invalid YAML";
        if (parser_.context && parser_.context_mark.line != parser_.problem_mark.line)
            why += fmt::format(" ({} at line {})", parser_.context, parser_.context_mark.line + 1);
        if (mark.offset < text_.size() && text_[mark.offset] == '\t') why += " (a tab: YAML indents with spaces)";
        throw ParseError{fmt::format("{}: {}", position(file_name_, mark), why)};
    }
    // The reader's errors (bytes that are not UTF-8 or UTF-16 text) come
    // with a byte offset, not a mark.
    [[noreturn]] void fail_encoding() {
        const size_t offset = std::min(parser_.problem_offset, text_.size());
        const size_t line_start = text_.rfind('\n', offset == 0 ? 0 : offset - 1);
        const size_t column = line_start == std::string_view::npos || offset == 0 ? offset : offset - line_start - 1;
        const size_t line = static_cast<size_t>(std::count(text_.begin(), text_.begin() + offset, '\n'));
        const std::string problem = parser_.problem ? parser_.problem : "invalid text";
        // "invalid leading UTF-8 octet" and the like; else a character YAML forbids.
        std::string why = problem.find("UTF-") != std::string::npos ? "not UTF-8 text: " + problem : problem;
        if (parser_.problem_value >= 0) why += fmt::format(" (byte 0x{:02x})", parser_.problem_value);
        throw ParseError{fmt::format("{}:{}:{}: {}", file_name_, line + 1, column + 1, why)};
    }
    [[noreturn]] void fail_at(const yaml_mark_t& at, std::string_view why) {
        throw ParseError{fmt::format("{}: {}", position(file_name_, offsets_.mark(at)), why)};
    }

    static std::string text(const yaml_char_t* chars) {
        return chars ? std::string(reinterpret_cast<const char*>(chars)) : std::string();
    }

    void remember(const yaml_char_t* anchor, const NodePtr& node) {
        if (anchor) anchors_[text(anchor)] = node;
    }

    NodePtr alias(const yaml_event_t& e) {
        const auto found = anchors_.find(text(e.data.alias.anchor));
        if (found == anchors_.end()) fail_at(e.start_mark, fmt::format("unknown anchor \"{}\"", text(e.data.alias.anchor)));
        return found->second;
    }

    NodePtr scalar(const yaml_event_t& e) {
        auto node = std::make_shared<Node>();
        node->scalar.assign(reinterpret_cast<const char*>(e.data.scalar.value), e.data.scalar.length);
        const bool plain = e.data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
        node->tag = e.data.scalar.tag ? text(e.data.scalar.tag) : plain ? "?" : "!";
        const bool null = (node->tag == "?" && is_null_word(node->scalar)) || node->tag == YAML_NULL_TAG;
        node->kind = null ? Node::Kind::null : Node::Kind::scalar;
        node->mark = offsets_.mark(e.start_mark);
        remember(e.data.scalar.anchor, node);
        return node;
    }

    void open(const yaml_event_t& e) {
        if (stack_.size() >= kMaxDepth) fail_at(e.start_mark, fmt::format("nested deeper than {} levels", kMaxDepth));
        auto node = std::make_shared<Node>();
        const bool mapping = e.type == YAML_MAPPING_START_EVENT;
        node->kind = mapping ? Node::Kind::mapping : Node::Kind::sequence;
        node->flow = mapping ? e.data.mapping_start.style == YAML_FLOW_MAPPING_STYLE
                             : e.data.sequence_start.style == YAML_FLOW_SEQUENCE_STYLE;
        const yaml_char_t* tag = mapping ? e.data.mapping_start.tag : e.data.sequence_start.tag;
        node->tag = tag ? text(tag) : "?";
        node->mark = offsets_.mark(e.start_mark);
        const yaml_char_t* anchor = mapping ? e.data.mapping_start.anchor : e.data.sequence_start.anchor;
        stack_.push_back(Open{.node = node, .anchor = anchor ? text(anchor) : std::string()});
    }

    void close() {
        NodePtr done = std::move(stack_.back().node);
        if (!stack_.back().anchor.empty()) anchors_[stack_.back().anchor] = done;
        stack_.pop_back();
        add(std::move(done));
    }

    // A finished node: the document's root, a list item, a key or a value.
    void add(NodePtr node) {
        if (stack_.empty()) {
            root_ = std::move(node);
            return;
        }
        Open& parent = stack_.back();
        if (parent.node->is_sequence()) {
            parent.node->items.push_back(std::move(node));
        } else if (!parent.pending_key) {
            parent.pending_key = std::move(node);
        } else {
            parent.node->entries.emplace_back(std::move(parent.pending_key), std::move(node));
            parent.pending_key = nullptr;
        }
    }

    yaml_parser_t parser_{};
    std::string_view text_;
    Offsets offsets_;
    const std::string& file_name_;
    std::vector<Open> stack_;
    NodePtr root_;
    std::map<std::string, NodePtr> anchors_;
};

std::string describe(const Node& node) {
    switch (node.kind) {
        case Node::Kind::null: return "null";
        case Node::Kind::sequence: return "a list";
        case Node::Kind::mapping: return "a mapping";
        case Node::Kind::scalar:
            // The non-specific tag "!" marks a quoted scalar: a string, whatever its text.
            if (node.tag == "!") return fmt::format("the string \"{}\"", node.scalar);
            if (node.tag == "?") return fmt::format("\"{}\"", node.scalar);
            return fmt::format("\"{}\" tagged {}", node.scalar, node.tag);
        default: return "no value";
    }
}

// Plain (untagged, unquoted) scalars have the tag "?"; an explicit tag must name the type.
bool is_plain_or_tagged(const Node& node, std::string_view type) {
    return node.is_scalar() && (node.tag == "?" || node.tag == fmt::format("tag:yaml.org,2002:{}", type));
}

}  // namespace

std::optional<bool> bool_word(std::string_view text) {
    if (text == "true" || text == "True" || text == "TRUE") return true;
    if (text == "false" || text == "False" || text == "FALSE") return false;
    return std::nullopt;
}

std::vector<Field> Field::load_all(std::string_view text, const std::string& file_name) {
    const auto file = std::make_shared<const std::string>(file_name);
    std::vector<Field> documents;
    for (NodePtr& node : Composer(text, file_name).documents()) {
        const Mark mark = node->mark;
        documents.push_back(Field(file, "", std::move(node), undefined(), mark));
    }
    return documents;
}

Field Field::load(std::string_view text, const std::string& file_name) {
    std::vector<Field> documents;
    // A trailing "---" or a comment-only part yields a null document: not content.
    for (const Field& document : load_all(text, file_name))
        if (!document.is_null()) documents.push_back(document);
    if (documents.empty()) throw ParseError{fmt::format("{}:1:1: empty document", file_name)};
    if (documents.size() > 1) documents[1].fail("expected one YAML document, found a second one");
    if (!documents[0].node_->is_mapping()) documents[0].fail_expected("a mapping at the top level");
    return documents[0];
}

std::string Field::message(std::string_view why) const {
    const std::string where = position(*file_, mark_);
    return path_.empty() ? fmt::format("{}: {}", where, why) : fmt::format("{}: {}: {}", where, path_, why);
}

void Field::fail(std::string_view why) const { throw ParseError{message(why)}; }

void Field::fail_expected(std::string_view expected) const {
    fail(fmt::format("expected {}, got {}", expected, describe(*node_)));
}

void Field::expect_mapping() const {
    if (!node_->is_mapping()) fail_expected("a mapping");
}

Field Field::child(std::string_view key) const {
    const std::string child_path = path_.empty() ? std::string(key) : fmt::format("{}.{}", path_, key);
    std::optional<Field> found;
    if (present()) {
        expect_mapping();
        for (const auto& [entry_key, value] : node_->entries) {
            if (!entry_key->is_scalar() || entry_key->scalar != key) continue;
            // YAML parsers keep duplicate keys; reading only one of them would hide the other.
            if (found)
                Field(file_, child_path, value, entry_key, entry_key->mark)
                    .fail(fmt::format("duplicate key (first at line {})", found->key_->mark.line + 1));
            // Point a null value at its key: it may have no text of its own.
            const Mark mark = value->is_null() ? entry_key->mark : value->mark;
            found.emplace(Field(file_, child_path, value, entry_key, mark));
        }
    }
    if (found) return *found;
    return Field(file_, child_path, undefined(), undefined(), mark_);
}

Field Field::required(std::string_view key) const {
    Field field = child(key);
    if (!field.node_->defined()) field.fail("required field is missing");
    return field;
}

void Field::reject_unknown_keys(std::initializer_list<std::string_view> known) const {
    if (!present()) return;
    expect_mapping();
    for (const auto& [entry_key, value] : node_->entries) {
        const std::string name = entry_key->is_scalar() ? entry_key->scalar : describe(*entry_key);
        if (std::find(known.begin(), known.end(), name) != known.end()) continue;
        Field(file_, path_.empty() ? name : fmt::format("{}.{}", path_, name), value, entry_key, entry_key->mark)
            .fail(fmt::format("unknown key; expected one of {}", fmt::join(known, ", ")));
    }
}

std::vector<Field> Field::items() const {
    std::vector<Field> items;
    if (!present()) return items;
    if (!node_->is_sequence()) fail_expected("a list");
    for (const NodePtr& item : node_->items) {
        // A null item may have no text of its own; the list's mark is the nearest truth.
        const Mark mark = item->is_null() ? mark_ : item->mark;
        items.push_back(Field(file_, fmt::format("{}[{}]", path_, items.size()), item, undefined(), mark));
    }
    return items;
}

bool Field::boolean() const {
    if (is_plain_or_tagged(*node_, "bool"))
        if (auto value = bool_word(node_->scalar)) return *value;
    fail_expected("a boolean (true or false)");
}

long long Field::integer() const {
    if (!is_plain_or_tagged(*node_, "int")) fail_expected("an integer");
    const std::string& text = node_->scalar;
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
    if (!node_->is_scalar()) fail_expected("a string");
    return node_->scalar;
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
