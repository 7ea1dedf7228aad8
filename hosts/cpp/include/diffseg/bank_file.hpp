// Support-bank files: the .npz that the Python runtime's save_support writes (runtime/bank_files.py),
// read and written here too, so a bank computed in either language loads in the other.
//
// A bank file is an uncompressed zip of .npy arrays: `format` ("diffews-support-bank"),
// `model_hash` (the engines' model hash), optional text tags `meta_*` (the backend) and the
// bank's tensors, name -> (S, N_l, C_l) float32.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace diffseg {

inline constexpr const char* kBankFormat = "diffews-support-bank";

// One array read from a file, as numpy names its type ("float32", "float64", "int64", ...).
struct StoredArray {
    std::string dtype;
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;  // C order, little-endian
};

struct BankFileContents {
    std::map<std::string, StoredArray> arrays;  // every tensor, whatever its type (checked by the segmenter)
    std::map<std::string, std::string> meta;    // the meta_* tags, without the prefix
};

// A float32 array to write.
struct BankTensor {
    std::string name;
    std::vector<int64_t> shape;
    const float* values = nullptr;
};

// Writes the tensors tagged with `model_hash` (and `meta`) through a temporary file and a rename.
// Throws OutputError when `path` exists without `overwrite` or is a folder, SystemError when the
// write fails (an existing file is then as it was).
void write_bank_file(const std::string& path, const std::vector<BankTensor>& tensors, const std::string& model_hash,
                     bool overwrite, const std::map<std::string, std::string>& meta = {});

// The tensors and tags of a bank file computed by the model `model_hash`. Throws MissingFileError,
// or InputError naming what is wrong (not a bank, another model's bank, unreadable) and the fix.
BankFileContents read_bank_file(const std::string& path, const std::string& model_hash);

}  // namespace diffseg
