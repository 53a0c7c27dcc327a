// set_enable_egress (egressctl egress enable|disable): a MeshConfig's text,
// edited in place. When the input is a valid MeshConfig, the edit must be
// one too, with enableEgress set and every other field as it was; setting
// the value it now has changes nothing.
#include "core/meshconfig.h"
#include "core/yaml_edit.h"
#include "fuzz_support.h"

namespace {

void check_edit(std::string_view input, bool value) {
    const std::string file = "mesh.yaml";
    const auto edit = egressd::set_enable_egress(input, value, file);
    if (!edit) {
        EGRESSD_FUZZ_CHECK(edit.error().message.starts_with(file + ":") ||
                               edit.error().message.starts_with("refusing the edit"),
                           edit.error().message);
        return;
    }
    EGRESSD_FUZZ_CHECK(edit->changed == (edit->text != input), edit->text);
    const auto again = egressd::set_enable_egress(edit->text, value, file);
    EGRESSD_FUZZ_CHECK(again.ok() && !again->changed && again->had_value && again->old_value == value, edit->text);

    const auto before = egressd::parse_meshconfig(input, file);
    if (!before) return;
    const auto after = egressd::parse_meshconfig(edit->text, file);
    EGRESSD_FUZZ_CHECK(after.ok(), edit->text + "\n" + after.error().message);
    egressd::MeshConfig expected = *before;
    expected.enable_egress = value;
    EGRESSD_FUZZ_CHECK(*after == expected, edit->text);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string_view input = egressd::fuzz::text(data, size);
    check_edit(input, true);
    check_edit(input, false);
    return 0;
}
