#include "core/identity.h"

namespace egressd {

Result<IdentityName> IdentityName::parse(const std::string& text) {
    const auto slash = text.find('/');
    if (slash == std::string::npos || slash == 0 || slash + 1 == text.size() ||
        text.find('/', slash + 1) != std::string::npos)
        return make_error("\"" + text + "\" is not NAMESPACE/SERVICEACCOUNT");
    return IdentityName{text.substr(0, slash), text.substr(slash + 1)};
}

}  // namespace egressd
