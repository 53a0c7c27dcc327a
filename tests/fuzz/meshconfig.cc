// parse_meshconfig: a MeshConfig file (or object text) of any bytes. Besides
// not crashing, an error must say where it is: "<file>:..." (meshconfig.h).
#include "core/meshconfig.h"

#include "fuzz_support.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string file = "mesh.yaml";
    const auto mesh = egressd::parse_meshconfig(egressd::fuzz::text(data, size), file);
    if (!mesh) EGRESSD_FUZZ_CHECK(mesh.error().message.starts_with(file + ":"), mesh.error().message);
    return 0;
}
