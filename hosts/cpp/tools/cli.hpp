// What the command-line tools share with the Python runtime's (runtime/cli.py): errors are one
// line on stderr, `error: ...`, with an exit code per kind of problem; outputs are checked before
// any work is done.
//
// | exit code | meaning                                                                         |
// | 2         | bad command line                                                                |
// | 3         | bad input: an image, mask, support bank, threshold or shot count, or a missing file |
// | 4         | the engine directory is missing, incomplete, modified or malformed              |
// | 5         | an output cannot be written as asked (exists without --overwrite, a folder, ...) |
// | 6         | the backend is not available here or failed                                     |
// | 7         | the operating system refused a read or write                                    |
#pragma once

#include <CLI/CLI.hpp>

#include <filesystem>
#include <functional>
#include <iostream>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "diffseg/errors.hpp"
#include "diffseg/files.hpp"

namespace diffseg::cli {

enum ExitCode { kUsage = 2, kInput = 3, kEngines = 4, kOutput = 5, kBackend = 6, kSystem = 7 };

// Parses the command line: the exit code to return at once (0 after --help, kUsage for a bad
// command line), or nothing to go on.
inline std::optional<int> parse(CLI::App& app, int argc, char** argv) {
    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& help) {
        return app.exit(help);
    } catch (const CLI::ParseError& err) {
        std::cerr << "error: " << err.what() << std::endl;
        return kUsage;
    }
    return std::nullopt;
}

// Whitespace collapsed, so that every error is one line.
inline std::string one_line(const std::string& message) {
    std::istringstream words(message);
    std::string word, out;
    while (words >> word) out += (out.empty() ? "" : " ") + word;
    return out;
}

inline int fail(int code, const std::string& message) {
    std::cerr << "error: " << one_line(message) << std::endl;
    return code;
}

// Runs `work`, turning the library's errors into `error: ...` and their exit codes.
inline int reporting_errors(const std::function<int()>& work) {
    try {
        return work();
    } catch (const EngineDirError& err) {
        return fail(kEngines, err.what());
    } catch (const OutputError& err) {
        return fail(kOutput, err.what());
    } catch (const InputError& err) {
        return fail(kInput, err.what());
    } catch (const SystemError& err) {
        return fail(kSystem, err.what());
    } catch (const BackendError& err) {
        return fail(kBackend, err.what());
    } catch (const std::exception& err) {  // bad_alloc, an unexpected library failure
        return fail(kBackend, err.what());
    }
}

// A path as Python's pathlib prints it: "." parts, doubled and trailing slashes dropped.
inline std::string python_path(const std::string& text) {
    std::string out = !text.empty() && text[0] == '/' ? "/" : "";
    std::istringstream parts(text);
    std::string part;
    while (std::getline(parts, part, '/')) {
        if (part.empty() || part == ".") continue;
        out += (out.empty() || out == "/" ? "" : "/") + part;
    }
    return out.empty() ? "." : out;
}

inline std::string stem(const std::string& path) { return std::filesystem::path(path).stem().string(); }

inline std::string join(const std::string& folder, const std::string& name) { return python_path(folder + "/" + name); }

// folder/STEM_KIND.png for every input stem and output kind, checked before any work is done:
// InputError when two inputs share a stem, OutputError when an output exists without overwrite
// or the folder cannot be written.
inline std::vector<std::string> check_outputs(const std::string& folder, const std::vector<std::string>& stems,
                                              const std::vector<std::string>& kinds, bool overwrite) {
    if (std::set<std::string>(stems.begin(), stems.end()).size() != stems.size())
        throw InputError("input file names must differ (outputs are named after them)");
    std::vector<std::string> outputs, existing;
    for (const auto& s : stems)
        for (const auto& kind : kinds) {
            outputs.push_back(join(folder, s + "_" + kind + ".png"));
            if (std::filesystem::exists(outputs.back())) existing.push_back(outputs.back());
        }
    if (!overwrite && existing.size() == 1)
        throw OutputError(existing[0] + " exists; pass --overwrite to replace it (nothing was written)");
    if (!overwrite && existing.size() > 1)
        throw OutputError(existing[0] + " (and " + std::to_string(existing.size() - 1) +
                          " more) exist; pass --overwrite to replace them (nothing was written)");
    check_output_folder(python_path(folder));
    return outputs;
}

}  // namespace diffseg::cli
