// Writing files so that a failed write never damages what was there (runtime/files.py): the new
// content goes to a temporary file beside the target, is flushed, and is renamed over it.
#pragma once

#include <functional>
#include <string>

namespace diffseg {

// Throws OutputError when `path` cannot take a new file: it exists without `overwrite`, is a
// folder, lies under a file, or its folder is not writable.
void check_writable(const std::string& path, bool overwrite);

// Throws OutputError unless `path` is a writable folder or can be created as one.
void check_output_folder(const std::string& path);

// Calls write(tmp) with a temporary path beside `path`, then renames tmp to `path`; on any failure
// the temporary file is removed and `path` is as it was. Throws as check_writable, and
// SystemError when the write or the rename fails.
void replace_file(const std::string& path, bool overwrite, const std::function<void(const std::string& tmp)>& write);

}  // namespace diffseg
