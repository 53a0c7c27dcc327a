// Whole-file reads and atomic replacement: how every input is read and every
// file egressd writes (the status file, a MeshConfig or workloads edit by
// egressctl) is replaced.
#pragma once

#include <cstdint>
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
// What tells one version of a file from the next: an editor's save renames
// a new inode into place, an in-place write changes its size or mtime. (Not
// the ctime: renaming a file changes it, and this must hold across a rename.)
struct FileVersion {
    uint64_t device = 0, inode = 0;
    int64_t size = 0, modified_ns = 0;
    bool operator==(const FileVersion&) const = default;
};
Result<FileVersion> file_version(const std::filesystem::path& path);
// A file's version and when its inode last changed (ctime), which any write
// moves whatever the mtime is set to: what tells a policy file unchanged
// since it was last read (PolicyDirLoader).
struct FileState {
    FileVersion version;
    int64_t changed_ns = 0;
    bool operator==(const FileState&) const = default;
};
Result<FileState> file_state(const std::filesystem::path& path);

// write_file_atomically, durable, but only if `path` is still the version
// `expected` after the new content is written beside it: false, and nothing
// replaced, when another writer changed it since it was read (the caller
// reads it again and redoes its edit). The new file is exchanged with the old
// (renameat2 RENAME_EXCHANGE), so a save that lands after the last look is
// seen and put back; only another save within those microseconds, reading
// the briefly exposed new file, could still be lost. A filesystem without
// exchange gets a plain rename after the last look.
Result<bool> replace_file_if_unchanged(const std::filesystem::path& path, const std::string& content,
                                       const FileVersion& expected);

// The temporary file write_file_atomically(path) writes before its rename.
std::filesystem::path atomic_write_temporary(const std::filesystem::path& path);

}  // namespace egressd
