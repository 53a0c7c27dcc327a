#include "core/identity.h"

#include "common/json_text.h"

namespace egressd {

Result<IdentityName> IdentityName::parse(const std::string& text) {
    const auto slash = text.find('/');
    if (slash == std::string::npos || slash == 0 || slash + 1 == text.size() ||
        text.find('/', slash + 1) != std::string::npos)
        return make_error("\"" + text + "\" is not NAMESPACE/SERVICEACCOUNT");
    // The workloads file is YAML, which is Unicode text: other bytes could not be written there.
    if (valid_utf8(text) != text) return make_error("\"" + valid_utf8(text) + "\" is not UTF-8 text");
    return IdentityName{text.substr(0, slash), text.substr(slash + 1)};
}

}  // namespace egressd
