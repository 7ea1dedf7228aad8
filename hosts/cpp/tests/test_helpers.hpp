// A temporary folder per test, removed with it.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace diffseg::testing {

class TempDir {
   public:
    TempDir() {
        std::string pattern = (std::filesystem::temp_directory_path() / "diffseg-test-XXXXXX").string();
        path_ = mkdtemp(pattern.data());
    }
    ~TempDir() { std::filesystem::remove_all(path_); }
    std::string file(const std::string& name) const { return (path_ / name).string(); }
    std::string str() const { return path_.string(); }

   private:
    std::filesystem::path path_;
};

inline void write_file(const std::string& path, const std::string& text) {
    std::ofstream(path, std::ios::binary) << text;
}

// Runs `call` and returns the message of the exception of type E it must throw.
template <typename E, typename Call>
std::string message_of(Call&& call) {
    try {
        call();
    } catch (const E& err) {
        return err.what();
    }
    ADD_FAILURE() << "no exception was thrown";
    return "";
}

}  // namespace diffseg::testing
