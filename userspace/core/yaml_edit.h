// Minimal, comment-preserving edits of YAML text.
#pragma once

#include <string>
#include <string_view>

#include "common/result.h"

namespace egressd {

struct BoolEdit {
    std::string text;  // the whole new document text
    bool had_value;    // the field existed before
    bool old_value;    // its value before (when had_value)
    bool changed;      // text differs from the input
};

// Sets spec.traffic.enableEgress to `value` in a MeshConfig's YAML text,
// changing only that scalar's token (or inserting the key, indented like its
// siblings, when it is missing; inserting `traffic:` under spec when that is
// missing). Everything else, comments and key order included, stays byte for
// byte. Flow-style mappings on the path are refused with a clear error.
Result<BoolEdit> set_enable_egress(std::string_view yaml_text, bool value, const std::string& file_name);

}  // namespace egressd
