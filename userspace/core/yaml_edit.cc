#include "core/yaml_edit.h"

#include <algorithm>
#include <array>

#include <fmt/format.h>

#include "core/yaml_input.h"

namespace egressd {

// ---- set_enable_egress -------------------------------------------------------
namespace {

using yaml_input::Field;
using yaml_input::ParseError;


std::string_view bool_text(bool value) { return value ? "true" : "false"; }

// Positions in the original text, from the parser's marks (byte offsets).
class TextPositions {
public:
    explicit TextPositions(std::string_view text) : text_(text) {}

    // Start of the line after the one holding `mark`.
    size_t next_line(const yaml_input::Mark& mark) const {
        const size_t newline = text_.find('\n', mark.offset);
        return newline == std::string_view::npos ? text_.size() : newline + 1;
    }

    std::string_view line_ending() const { return text_.find("\r\n") != std::string_view::npos ? "\r\n" : "\n"; }

    // Indentation of the block mapping `mapping`: the column of its first key,
    // which must be preceded by spaces only.
    size_t indentation(const Field& mapping) const {
        const yaml_input::Mark first_key = mapping.node().entries.front().first->mark;
        const size_t key_offset = first_key.offset;
        const std::string_view before = text_.substr(key_offset - first_key.column, first_key.column);
        if (before.find_first_not_of(' ') != std::string_view::npos)
            mapping.fail("cannot find the indentation of its keys (spaces only)");
        return first_key.column;
    }

    // End of the scalar token starting at `start`: a quoted scalar up to its
    // closing quote, a plain one is its text.
    std::optional<size_t> scalar_end(size_t start, std::string_view scalar) const {
        if (start >= text_.size()) return std::nullopt;
        const char quote = text_[start];
        if (quote == '"' || quote == '\'') {
            // A boolean word holds no quote character, escaped or not: the next one closes it.
            const size_t close = text_.find(quote, start + 1);
            if (close == std::string_view::npos) return std::nullopt;
            return close + 1;
        }
        if (text_.substr(start).starts_with(scalar)) return start + scalar.size();
        return std::nullopt;
    }

    // Past the node properties (a tag "!..." or an anchor "&...") at `start`.
    size_t skip_properties(size_t start) const {
        while (start < text_.size() && (text_[start] == '!' || text_[start] == '&')) {
            start = std::min(text_.find_first_of(" \t\r\n", start), text_.size());
            start = std::min(text_.find_first_not_of(" \t", start), text_.size());
        }
        return start;
    }

private:
    std::string_view text_;
};

// The parser also reads UTF-16 (told by a byte order mark), and its marks
// then count characters of the text converted: not offsets in this text.
// Such text, or any with a NUL (never in YAML), is refused.
void expect_utf8_text(std::string_view text, const std::string& file_name) {
    if (text.starts_with("\xFE\xFF") || text.starts_with("\xFF\xFE") || text.find('\0') != std::string_view::npos)
        throw ParseError{fmt::format("{}:1:1: not UTF-8 text (UTF-16, UTF-32 or a NUL byte): cannot be edited in place",
                                     file_name)};
}

void expect_block_mapping(const Field& field) {
    if (!field.node().is_mapping()) field.fail_expected("a mapping");
    if (field.node().flow)
        field.fail("is a flow-style mapping ({...}), which cannot be edited in place; write it in block style");
}

std::string inserted(std::string_view text, size_t offset, std::string_view lines) {
    std::string result(text.substr(0, offset));
    result += lines;
    result += text.substr(offset);
    return result;
}

BoolEdit insert_under_traffic(std::string_view text, const Field& traffic, bool value) {
    const TextPositions positions(text);
    const std::string indent(positions.indentation(traffic), ' ');
    const std::string line = fmt::format("{}enableEgress: {}{}", indent, bool_text(value), positions.line_ending());
    return BoolEdit{inserted(text, positions.next_line(traffic.key().mark), line), false, false, true};
}

BoolEdit insert_traffic_under_spec(std::string_view text, const Field& spec, bool value) {
    const TextPositions positions(text);
    const size_t traffic_column = positions.indentation(spec);
    // traffic's children go one step deeper, the step spec's own children use.
    const size_t step = traffic_column - spec.key().mark.column;
    const std::string_view eol = positions.line_ending();
    const std::string lines = fmt::format("{}traffic:{}{}enableEgress: {}{}", std::string(traffic_column, ' '), eol,
                                          std::string(traffic_column + step, ' '), bool_text(value), eol);
    return BoolEdit{inserted(text, positions.next_line(spec.key().mark), lines), false, false, true};
}

BoolEdit replace_value(std::string_view text, const Field& field, bool value) {
    const yaml_input::Node& node = field.node();
    // A quoted "true" is a string to the MeshConfig parser but says what it
    // means: read it, and write the new value plain.
    const std::optional<bool> old_value = node.is_scalar() ? yaml_input::bool_word(node.scalar) : std::nullopt;
    if (!old_value) field.fail_expected("a boolean (true or false)");
    // An alias's node is the anchored one, earlier in the text.
    if (node.mark.offset < field.key().mark.offset) field.fail("is an alias; edit the anchored value instead");

    const TextPositions positions(text);
    const size_t start = positions.skip_properties(node.mark.offset);
    const std::optional<size_t> end = positions.scalar_end(start, node.scalar);
    if (!end) field.fail("cannot locate its value in the text; write it as a plain true or false");

    BoolEdit edit{std::string(text), true, *old_value, false};
    const std::string_view token = text.substr(start, *end - start);
    if (*old_value == value && token == node.scalar) return edit;  // already that value, written plain
    edit.text.replace(start, token.size(), bool_text(value));
    edit.changed = true;
    return edit;
}

// The edited text must read back as a MeshConfig boolean: a tag ("!!str") or
// a layout this editor misjudged would otherwise produce a file egressd refuses.
void check_reads_back(const std::string& edited, const std::string& file_name) {
    try {
        Field::load(edited, file_name).required("spec").required("traffic").required("enableEgress").boolean();
    } catch (const ParseError& e) {
        throw ParseError{"refusing the edit, its result does not read back: " + e.message};
    }
}

BoolEdit edit_enable_egress(std::string_view text, bool value, const std::string& file_name) {
    expect_utf8_text(text, file_name);
    const Field spec = Field::load(text, file_name).required("spec");
    expect_block_mapping(spec);
    const Field traffic = spec.child("traffic");
    if (!traffic.node().defined()) return insert_traffic_under_spec(text, spec, value);
    expect_block_mapping(traffic);
    const Field enable_egress = traffic.child("enableEgress");
    if (!enable_egress.node().defined()) return insert_under_traffic(text, traffic, value);
    return replace_value(text, enable_egress, value);
}

}  // namespace

Result<BoolEdit> set_enable_egress(std::string_view yaml_text, bool value, const std::string& file_name) {
    try {
        BoolEdit edit = edit_enable_egress(yaml_text, value, file_name);
        if (edit.changed) check_reads_back(edit.text, file_name);
        return edit;
    } catch (const ParseError& e) {
        return make_error(e.message);
    }
}

}  // namespace egressd
