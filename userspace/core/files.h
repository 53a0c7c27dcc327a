// Whole-file reads and atomic replacement: how every input is read and every
// file egressd writes (the status file, a MeshConfig or workloads edit by
// egressctl) is replaced.
#pragma once

#include <filesystem>
#include <string>

#include "common/result.h"

namespace egressd {

// The whole file; the error names it and carries errno.
Result<std::string> read_file(const std::filesystem::path& path);

// Writes `content` to `path` atomically: a temporary file beside it, then a
// rename. Keeps the mode of an existing file. A symlink is followed, so the
// file it names is replaced and the link stays.
//   Durability::survives_crash: fsync before the rename, for what a user
//     wrote (a MeshConfig or workloads edit).
//   Durability::replace_only: no fsync, for a file rewritten at every start
//     (the status file): readers still see the old or the new whole file.
enum class Durability { survives_crash, replace_only };
Status write_file_atomically(const std::filesystem::path& path, const std::string& content,
                             Durability durability = Durability::survives_crash);
// The temporary file write_file_atomically(path) writes before its rename.
std::filesystem::path atomic_write_temporary(const std::filesystem::path& path);

}  // namespace egressd
