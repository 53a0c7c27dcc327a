#include <doctest/doctest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "core/files.h"

using namespace egressd;
namespace fs = std::filesystem;

TEST_CASE("replace_file_if_unchanged writes only over the version it read") {
    const fs::path dir = fs::temp_directory_path() / ("egressd-files-" + std::to_string(::getpid()));
    fs::create_directories(dir);
    const fs::path file = dir / "mesh.yaml";
    std::ofstream(file) << "one\n";
    const auto read_version = file_version(file);
    REQUIRE(read_version.ok());

    // Another writer saves as editors do (a new file renamed into place).
    std::ofstream(dir / "mesh.yaml.new") << "two\n";
    fs::rename(dir / "mesh.yaml.new", file);
    const auto stale = replace_file_if_unchanged(file, "mine\n", *read_version);
    REQUIRE(stale.ok());
    CHECK_FALSE(*stale);
    CHECK(read_file(file).value() == "two\n");

    const auto fresh_version = file_version(file);
    REQUIRE(fresh_version.ok());
    const auto fresh = replace_file_if_unchanged(file, "mine\n", *fresh_version);
    REQUIRE(fresh.ok());
    CHECK(*fresh);
    CHECK(read_file(file).value() == "mine\n");
    // No temporary file is left behind either way.
    CHECK(std::distance(fs::directory_iterator(dir), fs::directory_iterator()) == 1);
    fs::remove_all(dir);
}
