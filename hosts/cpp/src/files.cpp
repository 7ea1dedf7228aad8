#include "diffseg/files.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "diffseg/errors.hpp"

namespace fs = std::filesystem;

namespace diffseg {
namespace {

void check_parents(const fs::path& path) {
    for (fs::path parent = path.parent_path();; parent = parent.parent_path()) {
        const fs::path where = parent.empty() ? fs::path(".") : parent;
        if (fs::exists(where)) {
            if (!fs::is_directory(where))
                throw OutputError("cannot write " + path.string() + ": " + where.string() + " is a file, not a folder");
            if (access(where.c_str(), W_OK | X_OK) != 0)
                throw OutputError("cannot write " + path.string() + ": " + where.string() +
                                  " is not writable; choose another location");
            return;
        }
        if (parent.empty() || parent == parent.parent_path()) return;
    }
}

void check_path(const fs::path& path, bool overwrite, bool folder) {
    if (fs::exists(path)) {
        if (folder != fs::is_directory(path)) {
            const std::string want = folder ? "folder" : "file", got = folder ? "file" : "folder";
            throw OutputError(path.string() + " is a " + got + ", not a " + want + "; give a path for the " + want +
                              " itself");
        }
        if (!overwrite)
            throw OutputError(path.string() + " exists; pass overwrite=True (--overwrite) to replace it");
    }
    check_parents(path);
}

[[noreturn]] void system_error(const std::string& where) {
    throw SystemError(where + ": " + std::strerror(errno));
}

mode_t current_umask() {
    // Read without changing it: umask() would, racing other threads.
    FILE* status = std::fopen("/proc/self/status", "r");
    unsigned value = 022;
    if (status) {
        char line[256];
        while (std::fgets(line, sizeof line, status))
            if (std::sscanf(line, "Umask: %o", &value) == 1) break;
        std::fclose(status);
    }
    return static_cast<mode_t>(value);
}

}  // namespace

void check_writable(const std::string& path, bool overwrite) { check_path(fs::path(path), overwrite, false); }

void check_output_folder(const std::string& path) {
    const fs::path folder(path);
    if (fs::exists(folder) && !fs::is_directory(folder))
        throw OutputError(path + " is a file, not a folder; give a folder for the outputs");
    if (fs::is_directory(folder)) {
        if (access(folder.c_str(), W_OK | X_OK) != 0)
            throw OutputError("cannot write into " + path + ": it is not writable; choose another folder");
        return;
    }
    check_path(folder, false, true);
}

void replace_file(const std::string& path, bool overwrite, const std::function<void(const std::string& tmp)>& write) {
    const fs::path target(path);
    check_path(target, overwrite, false);
    const fs::path folder = target.parent_path().empty() ? fs::path(".") : target.parent_path();
    std::error_code error;
    fs::create_directories(folder, error);
    if (error) throw SystemError(folder.string() + ": " + error.message());
    std::string pattern = (folder / ("." + target.filename().string() + ".XXXXXX")).string();
    const int fd = mkstemp(pattern.data());
    if (fd < 0) system_error(folder.string());
    close(fd);
    const std::string tmp = pattern;
    try {
        // mkstemp's 0600 would hide the result from other users; a replaced file keeps its own mode.
        struct stat existing {};
        const mode_t mode = stat(path.c_str(), &existing) == 0 ? (existing.st_mode & 07777) : (0666 & ~current_umask());
        if (chmod(tmp.c_str(), mode) != 0) system_error(tmp);
        write(tmp);
        const int handle = open(tmp.c_str(), O_RDONLY);
        if (handle < 0 || fsync(handle) != 0) {
            if (handle >= 0) close(handle);
            system_error(tmp);
        }
        close(handle);
        if (rename(tmp.c_str(), path.c_str()) != 0) system_error(path);
    } catch (...) {
        unlink(tmp.c_str());
        throw;
    }
    const int directory = open(folder.c_str(), O_RDONLY);
    if (directory >= 0) {  // make the rename durable; a no-op where folders cannot be opened
        fsync(directory);
        close(directory);
    }
}

}  // namespace diffseg
