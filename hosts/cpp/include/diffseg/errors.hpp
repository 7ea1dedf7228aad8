// The errors the library throws, one class per kind of problem, as the Python runtime's are:
// the caller (or a CLI) can tell a bad input from a bad engine directory from a failed backend.
// Messages say what was wrong and how to fix it, word for word as the Python runtime's where
// both check the same thing (tests/test_cpp_host.py compares them).
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

namespace diffseg {

// Base class of everything the library throws on purpose.
struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// A bad image, mask, support bank, threshold or shot count (Python: ValueError). CLI exit code 3.
struct InputError : Error {
    using Error::Error;
};

// An input file that does not exist (Python: FileNotFoundError). CLI exit code 3.
struct MissingFileError : InputError {
    using InputError::InputError;
};

// The engine directory is missing, incomplete, modified or malformed. CLI exit code 4.
struct EngineDirError : Error {
    using Error::Error;
};

// An output cannot be written as asked: it exists without overwrite, is a folder, lies under a
// file, or its folder is not writable. CLI exit code 5.
struct OutputError : Error {
    using Error::Error;
};

// The backend is not available here or failed (no bf16 on this CPU, no TensorRT, an inference
// error). CLI exit code 6.
struct BackendError : Error {
    using Error::Error;
};

// The operating system refused a read or write (disk full, permissions). CLI exit code 7.
struct SystemError : Error {
    using Error::Error;
};

// `value` as Python's repr(float) writes it (1.0, 0.25, 1e-05, nan, inf), so that messages that
// quote a number read as the Python runtime's.
std::string python_float(double value);

// `names` as Python's repr of a list of str writes it: ['a', 'b'].
std::string python_list(const std::vector<std::string>& names);

}  // namespace diffseg
