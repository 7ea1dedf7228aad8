// Bank files as numpy's np.savez writes them: a zip (libzip) of .npy arrays, stored uncompressed.
#include "diffseg/bank_file.hpp"

#include <zip.h>

#include <algorithm>
#include <cmath>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <regex>

#include "diffseg/errors.hpp"
#include "diffseg/files.hpp"

namespace diffseg {
namespace {

const std::string kMagic = "\x93NUMPY";
const std::string kMetaPrefix = "meta_";

// numpy's name of a little-endian (or byte-order-free) type code, or the code itself.
std::string numpy_dtype(const std::string& descr) {
    static const std::map<std::string, std::string> names{
        {"<f4", "float32"}, {"<f8", "float64"}, {"<f2", "float16"}, {"<i8", "int64"}, {"<i4", "int32"},
        {"<i2", "int16"},   {"|i1", "int8"},    {"|u1", "uint8"},   {"<u2", "uint16"}, {"<u4", "uint32"},
        {"<u8", "uint64"},  {"|b1", "bool"}};
    auto found = names.find(descr);
    return found == names.end() ? descr : found->second;
}

size_t item_size(const std::string& descr) {
    static const std::regex code("^[<>|=]([a-zA-Z])(\\d+)$");
    std::smatch match;
    if (!std::regex_match(descr, match, code)) throw std::runtime_error("unsupported dtype " + descr);
    const size_t count = std::stoul(match[2]);
    return match[1] == "U" ? 4 * count : count;
}

// One .npy file's bytes -> the array (numpy's format, versions 1 to 3).
StoredArray parse_npy(const std::vector<uint8_t>& file) {
    if (file.size() < 10 || std::string(file.begin(), file.begin() + 6) != kMagic)
        throw std::runtime_error("an entry is not a .npy array");
    const int major = file[6];
    const size_t length_bytes = major == 1 ? 2 : 4;
    size_t header_length = 0;
    for (size_t i = 0; i < length_bytes; ++i) header_length |= static_cast<size_t>(file[8 + i]) << (8 * i);
    const size_t start = 8 + length_bytes + header_length;
    if (start > file.size()) throw std::runtime_error("a .npy header runs past its file");
    const std::string header(file.begin() + 8 + static_cast<long>(length_bytes), file.begin() + static_cast<long>(start));
    static const std::regex descr("'descr':\\s*'([^']+)'"), fortran("'fortran_order':\\s*(True|False)"),
        shape("'shape':\\s*\\(([^)]*)\\)");
    std::smatch d, f, s;
    if (!std::regex_search(header, d, descr) || !std::regex_search(header, f, fortran) ||
        !std::regex_search(header, s, shape))
        throw std::runtime_error("a .npy header lacks descr, fortran_order or shape");
    StoredArray array;
    const std::string code = d[1];
    array.dtype = code[1] == 'U' ? "str" : numpy_dtype(code);
    const std::string dims = s[1];
    static const std::regex number("\\d+");
    for (auto it = std::sregex_iterator(dims.begin(), dims.end(), number); it != std::sregex_iterator(); ++it)
        array.shape.push_back(std::stoll(it->str()));
    size_t count = item_size(code);
    for (int64_t dim : array.shape) count *= static_cast<size_t>(dim);
    if (file.size() - start < count) throw std::runtime_error("a .npy array is shorter than its header says");
    if (f[1] == "True" && array.shape.size() > 1)
        throw std::runtime_error("a .npy array is in Fortran order; save it in C order");
    if (code[0] == '>' && item_size(code) > 1) throw std::runtime_error("a .npy array is big-endian");
    array.bytes.assign(file.begin() + static_cast<long>(start), file.begin() + static_cast<long>(start + count));
    if (code[1] == 'U') array.shape = {static_cast<int64_t>(item_size(code) / 4)};  // characters, UTF-32
    return array;
}

// A numpy str array (UTF-32LE, NUL-padded) -> UTF-8.
std::string text_of(const StoredArray& array) {
    std::string out;
    for (size_t i = 0; i + 3 < array.bytes.size(); i += 4) {
        const uint32_t c = array.bytes[i] | array.bytes[i + 1] << 8 | array.bytes[i + 2] << 16 |
                           static_cast<uint32_t>(array.bytes[i + 3]) << 24;
        if (c == 0) break;
        if (c < 0x80) {
            out += static_cast<char>(c);
        } else if (c < 0x800) {
            out += static_cast<char>(0xC0 | c >> 6);
            out += static_cast<char>(0x80 | (c & 0x3F));
        } else if (c < 0x10000) {
            out += static_cast<char>(0xE0 | c >> 12);
            out += static_cast<char>(0x80 | (c >> 6 & 0x3F));
            out += static_cast<char>(0x80 | (c & 0x3F));
        } else {
            out += static_cast<char>(0xF0 | c >> 18);
            out += static_cast<char>(0x80 | (c >> 12 & 0x3F));
            out += static_cast<char>(0x80 | (c >> 6 & 0x3F));
            out += static_cast<char>(0x80 | (c & 0x3F));
        }
    }
    return out;
}

// A .npy header (version 1) for `descr` and `shape`, padded as numpy pads it (to 64 bytes).
std::string npy_header(const std::string& descr, const std::vector<int64_t>& shape) {
    std::string dims;
    for (size_t i = 0; i < shape.size(); ++i) dims += (i ? ", " : "") + std::to_string(shape[i]);
    if (shape.size() == 1) dims += ",";
    std::string dict = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (" + dims + "), }";
    const size_t total = kMagic.size() + 4 + dict.size() + 1;
    dict += std::string((64 - total % 64) % 64, ' ') + "\n";
    std::string header = kMagic + std::string("\x01\x00", 2);
    header += static_cast<char>(dict.size() & 0xFF);
    header += static_cast<char>(dict.size() >> 8);
    return header + dict;
}

// A numpy 0-d str array's data: each character as UTF-32LE (ASCII tags only), at least one
// character long as numpy makes it.
std::string utf32(const std::string& text) {
    std::string out;
    for (unsigned char c : text) out += std::string{static_cast<char>(c), 0, 0, 0};
    return text.empty() ? std::string(4, '\0') : out;
}

std::string zip_message(zip_error_t* error) { return zip_error_strerror(error); }

std::map<std::string, StoredArray> read_npz(const std::string& path) {
    int code = 0;
    std::unique_ptr<zip_t, decltype(&zip_discard)> archive(zip_open(path.c_str(), ZIP_RDONLY, &code), zip_discard);
    if (!archive) {
        zip_error_t error;
        zip_error_init_with_code(&error, code);
        const std::string message = zip_message(&error);
        zip_error_fini(&error);
        throw std::runtime_error(message);
    }
    std::map<std::string, StoredArray> arrays;
    const zip_int64_t entries = zip_get_num_entries(archive.get(), 0);
    for (zip_int64_t i = 0; i < entries; ++i) {
        zip_stat_t stat;
        if (zip_stat_index(archive.get(), static_cast<zip_uint64_t>(i), 0, &stat) != 0)
            throw std::runtime_error(zip_message(zip_get_error(archive.get())));
        std::string name = stat.name;
        if (name.size() < 4 || name.substr(name.size() - 4) != ".npy") continue;
        std::vector<uint8_t> bytes(stat.size);
        std::unique_ptr<zip_file_t, decltype(&zip_fclose)> file(zip_fopen_index(archive.get(), static_cast<zip_uint64_t>(i), 0),
                                                                 zip_fclose);
        if (!file || zip_fread(file.get(), bytes.data(), stat.size) != static_cast<zip_int64_t>(stat.size))
            throw std::runtime_error(name + ": " + zip_message(zip_get_error(archive.get())));
        arrays[name.substr(0, name.size() - 4)] = parse_npy(bytes);
    }
    return arrays;
}

}  // namespace

BankFileContents read_bank_file(const std::string& path, const std::string& model_hash) {
    if (!std::filesystem::is_regular_file(path)) throw MissingFileError("no such support bank file: " + path);
    BankFileContents contents;
    try {
        contents.arrays = read_npz(path);
    } catch (const std::exception& err) {
        throw InputError(path + " is not a readable support bank (.npz written by save_support): " + err.what());
    }
    auto take_text = [&](const std::string& name) -> std::optional<std::string> {
        auto found = contents.arrays.find(name);
        if (found == contents.arrays.end()) return std::nullopt;
        const std::string text = found->second.dtype == "str" ? text_of(found->second) : "";
        contents.arrays.erase(found);
        return text;
    };
    if (take_text("format").value_or("") != kBankFormat)
        throw InputError(path + " is not a DiffewS support bank written by save_support (no format tag)");
    const auto found = take_text("model_hash");
    if (!found)
        throw InputError(path + " records no model_hash, so its model is unknown; recompute it with set_support");
    if (*found != model_hash)
        throw InputError(path + " was computed by another model (hash " + found->substr(0, 12) + ", these engines " +
                         model_hash.substr(0, 12) + "); recompute it with set_support");
    for (auto it = contents.arrays.begin(); it != contents.arrays.end();) {
        if (it->first.rfind(kMetaPrefix, 0) == 0) {
            contents.meta[it->first.substr(kMetaPrefix.size())] = text_of(it->second);
            it = contents.arrays.erase(it);
        } else {
            ++it;
        }
    }
    return contents;
}

void write_bank_file(const std::string& path, const std::vector<BankTensor>& tensors, const std::string& model_hash,
                     bool overwrite, const std::map<std::string, std::string>& meta) {
    replace_file(path, overwrite, [&](const std::string& tmp) {
        int code = 0;
        zip_t* archive = zip_open(tmp.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &code);
        if (!archive) throw SystemError(path + ": libzip could not create the file (error " + std::to_string(code) + ")");
        std::deque<std::string> parts;  // header and text bytes, alive until zip_close (a deque never moves them)
        auto add = [&](const std::string& name, std::vector<zip_buffer_fragment_t> fragments) {
            zip_error_t error;
            zip_error_init(&error);
            zip_source_t* source = zip_source_buffer_fragment_create(fragments.data(), fragments.size(), 0, &error);
            const zip_int64_t index =
                source ? zip_file_add(archive, (name + ".npy").c_str(), source, ZIP_FL_ENC_UTF_8 | ZIP_FL_OVERWRITE)
                       : -1;
            if (index < 0 || zip_set_file_compression(archive, static_cast<zip_uint64_t>(index), ZIP_CM_STORE, 0) != 0) {
                if (source && index < 0) zip_source_free(source);
                zip_discard(archive);
                throw SystemError(path + ": libzip could not add " + name);
            }
        };
        auto add_text = [&](const std::string& name, const std::string& text) {
            parts.push_back(npy_header("<U" + std::to_string(std::max<size_t>(text.size(), 1)), {}) + utf32(text));
            add(name, {{reinterpret_cast<zip_uint8_t*>(parts.back().data()), parts.back().size()}});
        };
        add_text("format", kBankFormat);
        add_text("model_hash", model_hash);
        for (const auto& [key, value] : meta) add_text(kMetaPrefix + key, value);
        for (const auto& tensor : tensors) {
            size_t count = 1;
            for (int64_t dim : tensor.shape) count *= static_cast<size_t>(dim);
            parts.push_back(npy_header("<f4", tensor.shape));
            add(tensor.name, {{reinterpret_cast<zip_uint8_t*>(parts.back().data()), parts.back().size()},
                              {reinterpret_cast<zip_uint8_t*>(const_cast<float*>(tensor.values)), count * sizeof(float)}});
        }
        if (zip_close(archive) != 0) {
            const std::string message = zip_message(zip_get_error(archive));
            zip_discard(archive);
            throw SystemError(path + ": " + message);
        }
    });
}

}  // namespace diffseg
