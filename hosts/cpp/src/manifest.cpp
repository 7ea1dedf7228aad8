// Reading manifest.json: every field the host uses is checked for presence and type as it is read
// (the Python runtime validates against the JSON Schema; no JSON Schema validator is packaged for
// C++ in Debian, so the checks here cover what this host reads), then the graph files.
#include "diffseg/manifest.hpp"

#include <openssl/evp.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

#include "diffseg/errors.hpp"

namespace fs = std::filesystem;
using nlohmann::json;

namespace diffseg {
namespace {

constexpr int64_t kMaxSelectionSeed = 4294967295;  // 2**32 - 1, as manifest.schema.json says

// A field the schema forbids or misformats: the message names it by its JSON path ($.rules.shots.max).
struct SchemaProblem : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Typed access to one JSON object, naming the field's path in every complaint.
class Field {
   public:
    Field(const json& value, std::string path) : value_(value), path_(std::move(path)) {}

    bool has(const char* key) const { return value_.is_object() && value_.contains(key); }
    Field operator[](const char* key) const {
        if (!value_.is_object()) throw SchemaProblem(path_ + ": " + value_.dump() + " is not of type 'object'");
        if (!value_.contains(key)) throw SchemaProblem(path_ + ": '" + key + "' is a required property");
        return Field(value_.at(key), path_ + "." + key);
    }
    Field at(size_t index) const { return Field(value_.at(index), path_ + "[" + std::to_string(index) + "]"); }
    size_t size() const { return value_.size(); }

    std::string string() const {
        if (!value_.is_string()) fail("string");
        return value_.get<std::string>();
    }
    int64_t integer(int64_t minimum = INT64_MIN) const {
        // JSON's 1.0 is an integer to the schema (and to Python's reader), so take it as one.
        if (value_.is_number_integer()) return check_minimum(value_.get<int64_t>(), minimum);
        if (value_.is_number_float() && std::floor(value_.get<double>()) == value_.get<double>())
            return check_minimum(static_cast<int64_t>(value_.get<double>()), minimum);
        fail("integer");
        return 0;
    }
    Number number() const {
        if (!value_.is_number() || value_.is_boolean()) fail("number");
        return Number{value_.get<double>(), value_.is_number_integer()};
    }
    bool boolean() const {
        if (!value_.is_boolean()) fail("boolean");
        return value_.get<bool>();
    }
    const json& array() const {
        if (!value_.is_array()) fail("array");
        return value_;
    }
    const json& object() const {
        if (!value_.is_object()) fail("object");
        return value_;
    }
    const json& raw() const { return value_; }
    const std::string& path() const { return path_; }

   private:
    [[noreturn]] void fail(const char* type) const {
        throw SchemaProblem(path_ + ": " + value_.dump() + " is not of type '" + type + "'");
    }
    int64_t check_minimum(int64_t value, int64_t minimum) const {
        if (value < minimum)
            throw SchemaProblem(path_ + ": " + std::to_string(value) + " is less than the minimum of " +
                                std::to_string(minimum));
        return value;
    }

    const json& value_;
    std::string path_;
};

const std::regex kSha256Pattern("^[0-9a-f]{64}$");

std::string sha256_field(const Field& field) {
    std::string value = field.string();
    if (!std::regex_match(value, kSha256Pattern))
        throw SchemaProblem(field.path() + ": '" + value + "' does not match '^[0-9a-f]{64}$'");
    return value;
}

// A file directly inside the engine directory: no folders, no "..".
std::string file_name_field(const Field& field) {
    std::string value = field.string();
    if (value.empty() || value == "." || value == ".." || value.find('/') != std::string::npos ||
        value.find('\\') != std::string::npos)
        throw SchemaProblem(field.path() + ": '" + value + "' does not match '^(?!\\.\\.?$)[^/\\\\]+$'");
    return value;
}

std::vector<int64_t> sizes(const Field& field) {
    std::vector<int64_t> out;
    for (size_t i = 0; i < field.array().size(); ++i) out.push_back(field.at(i).integer(0));
    return out;
}

TensorSpec tensor_spec(const Field& field) {
    TensorSpec spec;
    spec.name = field["name"].string();
    spec.dtype = field["dtype"].string();
    const Field shape = field["shape"];
    for (size_t i = 0; i < shape.array().size(); ++i) {
        const Field axis = shape.at(i);
        if (axis.raw().is_string()) {
            spec.shape.push_back(-1);
            spec.axis_names.push_back(axis.string());
        } else {
            spec.shape.push_back(axis.integer(0));
            spec.axis_names.emplace_back();
        }
    }
    spec.min_shape = sizes(field["min_shape"]);
    spec.opt_shape = sizes(field["opt_shape"]);
    spec.max_shape = sizes(field["max_shape"]);
    if (spec.min_shape.size() != spec.shape.size() || spec.max_shape.size() != spec.shape.size())
        throw SchemaProblem(field.path() + ": min_shape and max_shape must have one size per axis of shape");
    return spec;
}

GraphSpec graph_spec(const Field& field) {
    GraphSpec spec;
    spec.name = field["name"].string();
    for (const char* side : {"inputs", "outputs"}) {
        const Field tensors = field[side];
        if (tensors.array().empty()) throw SchemaProblem(tensors.path() + ": [] should be non-empty");
        auto& into = std::string(side) == "inputs" ? spec.inputs : spec.outputs;
        for (size_t i = 0; i < tensors.size(); ++i) into.push_back(tensor_spec(tensors.at(i)));
    }
    return spec;
}

GraphEntry graph_entry(const Field& field, bool default_reduced_precision) {
    GraphEntry entry;
    entry.file = file_name_field(field["file"]);
    entry.sha256 = sha256_field(field["sha256"]);
    if (field.has("external_data")) {
        const Field external = field["external_data"];
        for (const auto& item : external.object().items()) {
            Field name(json(item.key()), external.path() + "." + item.key());
            entry.external_data[file_name_field(name)] = sha256_field(Field(item.value(), name.path()));
        }
    }
    entry.reduced_precision =
        field.has("reduced_precision") ? field["reduced_precision"].boolean() : default_reduced_precision;
    entry.spec = graph_spec(field["spec"]);
    return entry;
}

void read_rules(const Field& rules, bool diffews, Rules& out) {
    out.min_side = rules["sides"]["min"].integer(1);
    out.max_side = rules["sides"]["max"].integer(1);
    if (!diffews) return;
    out.min_shots = rules["shots"]["min"].integer(1);
    out.max_shots = rules["shots"]["max"].integer(1);
    out.min_foreground_pixels = rules["support_mask"]["min_foreground_pixels"].integer(1);
    out.threshold_min = rules["threshold"]["min"].number();
    out.threshold_max = rules["threshold"]["max"].number();
    out.threshold_max_exclusive = rules["threshold"]["max_exclusive"].boolean();
    if (rules["bank"]["shot_axis"].integer() != 0)
        throw SchemaProblem(rules.path() + ".bank.shot_axis: 0 was expected");
}

void read_diffews(const Field& root, Manifest& manifest) {
    const Field readout = root["readout"];
    manifest.readout.mode = readout["mode"].string();
    if (manifest.readout.mode != "relative" && manifest.readout.mode != "absolute")
        throw SchemaProblem(readout.path() + ".mode: '" + manifest.readout.mode +
                            "' is not one of ['relative', 'absolute']");
    manifest.readout.threshold = readout["threshold"].number().value;
    manifest.readout.decoder = readout.has("decoder") ? readout["decoder"].string() : "vae";
    manifest.max_shots = static_cast<int>(root["max_shots"].integer(1));
    if (root.has("profile")) {  // absent: built before profiles
        manifest.profile = root["profile"].string();
        if (manifest.profile != "exact" && manifest.profile != "default" && manifest.profile != "fast" &&
            manifest.profile != "custom")
            throw SchemaProblem(root["profile"].path() + ": '" + manifest.profile +
                                "' is not one of ['exact', 'default', 'fast', 'custom']");
    }
    if (root.has("support_selection")) {  // absent: every token, as engines built before it
        const Field selection = root["support_selection"];
        manifest.selection.rule = selection["rule"].string();
        if (manifest.selection.rule != "all" && manifest.selection.rule != "uniform" &&
            manifest.selection.rule != "stratified" && manifest.selection.rule != "foreground")
            throw SchemaProblem(selection.path() + ".rule: '" + manifest.selection.rule +
                                "' is not one of ['all', 'uniform', 'stratified', 'foreground']");
        manifest.selection.budget_shots = static_cast<int>(selection["budget_shots"].integer(1));
        if (selection.has("seed")) {
            const Field seed = selection["seed"];
            const int64_t value = seed.integer(0);
            if (value > kMaxSelectionSeed)  // the uniform rule shifts it by 32 bits: larger seeds would repeat
                throw SchemaProblem(seed.path() + ": " + std::to_string(value) + " is greater than the maximum of " +
                                    std::to_string(kMaxSelectionSeed));
            manifest.selection.seed = static_cast<uint64_t>(value);
        }
        if (selection.has("foreground_share")) manifest.selection.foreground_share = selection["foreground_share"].number().value;
    }
    const Field layers = root["layers"];
    if (layers.array().empty()) throw SchemaProblem(layers.path() + ": [] should be non-empty");
    for (size_t i = 0; i < layers.size(); ++i) {
        const Field layer = layers.at(i);
        manifest.layers.push_back({layer["name"].string(), layer["tokens"].integer(1), layer["channels"].integer(1)});
    }
}

void read_parts(const Field& root, Manifest& manifest) {
    const Field parts = root["parts"];
    const Field names = parts["class_names"];
    if (names.array().empty() || names.size() > 256)
        throw SchemaProblem(names.path() + ": there must be 1 to 256 class names");
    for (size_t i = 0; i < names.size(); ++i) manifest.class_names.push_back(names.at(i).string());
    const Field patching = parts["patching"];
    manifest.patching.output_size = static_cast<int>(patching["output_size"].integer(8));
    manifest.patching.per_side = static_cast<int>(patching["per_side"].integer(1));
    const Field patch = patching["patch_size"];
    manifest.patching.patch_size = patch.raw().is_null() ? 0 : static_cast<int>(patch.integer(8));
}

json parse_file(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in)
        throw EngineDirError(path.string() + " cannot be read (" + std::strerror(errno) + "); check its permissions");
    std::stringstream text;
    text << in.rdbuf();
    try {
        return json::parse(text.str());
    } catch (const json::parse_error& err) {
        throw EngineDirError(path.string() + " is not valid JSON (" + err.what() + "); rebuild the engines");
    }
}

}  // namespace

std::string Number::text() const { return is_integer ? std::to_string(static_cast<int64_t>(value)) : python_float(value); }

Manifest Manifest::read(const std::string& directory, bool verify) {
    const fs::path dir(directory);
    const fs::path path = dir / kManifestFile;
    if (!fs::is_regular_file(path))
        throw EngineDirError(directory + " is not an engine directory (no " + kManifestFile +
                             "); build one with `python -m export.build_engine --out DIR`");
    const json data = parse_file(path);
    if (data.is_object() && data.contains("schema_version") && data["schema_version"].is_number_integer()) {
        const int64_t version = data["schema_version"].get<int64_t>();
        if (version != kSchemaVersion) {
            const std::string fix = version > kSchemaVersion ? "upgrade the toolkit"
                                                             : "rebuild it with python -m export.build_engine";
            throw EngineDirError(path.string() + " has schema version " + std::to_string(version) +
                                 "; this runtime reads version " + std::to_string(kSchemaVersion) + ": " + fix);
        }
    }
    Manifest manifest;
    manifest.directory = directory;
    try {
        const Field root(data, "$");
        if (root["schema_version"].integer() != kSchemaVersion)
            throw SchemaProblem("$.schema_version: " + std::to_string(kSchemaVersion) + " was expected");
        manifest.kind = root["kind"].string();
        if (manifest.kind != "diffews" && manifest.kind != "slime")
            throw SchemaProblem("$.kind: '" + manifest.kind + "' is not one of ['diffews', 'slime']");
        const bool diffews = manifest.kind == "diffews";
        manifest.model_hash = root["model"]["hash"].string();
        if (manifest.model_hash.empty()) throw SchemaProblem("$.model.hash: '' should be non-empty");
        manifest.resolution = static_cast<int>(root["resolution"].integer(8));
        manifest.precision = root["precision"].string();
        const Field graphs = root["graphs"];
        for (const auto& item : graphs.object().items()) {
            // Before `reduced_precision` existed, runtimes kept the DiffewS support encoder in fp32.
            const bool default_reduced = !(diffews && item.key() == kSupportEncoder);
            manifest.graphs[item.key()] = graph_entry(graphs[item.key().c_str()], default_reduced);
        }
        const std::vector<std::string> required = diffews ? std::vector<std::string>{kSupportEncoder, kQuerySegmenter}
                                                           : std::vector<std::string>{kPartSegmenter};
        for (const auto& name : required)
            if (!manifest.graphs.count(name)) throw SchemaProblem("$.graphs: '" + name + "' is a required property");
        if (root.has("tensorrt_plans")) {
            for (const auto& item : root["tensorrt_plans"].object().items()) {
                const Field plans(item.value(), "$.tensorrt_plans." + item.key());
                for (size_t i = 0; i < plans.array().size(); ++i) {
                    const Field plan = plans.at(i);
                    TensorRTPlan entry{file_name_field(plan["file"]), sha256_field(plan["sha256"]),
                                       plan["tensorrt"].string(), plan["compute_capability"].string(),
                                       plan.has("precision") ? plan["precision"].string() : ""};
                    if (manifest.graphs.count(item.key())) manifest.graphs[item.key()].tensorrt_plans.push_back(entry);
                }
            }
        }
        read_rules(root["rules"], diffews, manifest.rules);
        if (diffews)
            read_diffews(root, manifest);
        else
            read_parts(root, manifest);
    } catch (const SchemaProblem& problem) {
        throw EngineDirError(path.string() + " is not a valid engine manifest (" + problem.what() +
                             "; schema: manifest.schema.json); rebuild the engines");
    }
    for (const auto& [name, entry] : manifest.graphs) {
        std::map<std::string, std::string> files = entry.external_data;
        files[entry.file] = entry.sha256;
        for (const auto& [file_name, sha256] : files) {
            const fs::path file = dir / file_name;
            if (!fs::is_regular_file(file))
                throw EngineDirError(directory + ": graph '" + name + "' file " + file_name +
                                     " is missing; rebuild the engines");
            if (verify && file_sha256(file.string()) != sha256)
                throw EngineDirError(file.string() + " does not match its sha256 in " + kManifestFile +
                                     ": it was modified or truncated after the build; rebuild the engines");
        }
    }
    return manifest;
}

const GraphEntry& Manifest::graph(const std::string& name) const {
    auto found = graphs.find(name);
    if (found == graphs.end()) {
        std::string names;
        for (const auto& item : graphs) names += (names.empty() ? "'" : ", '") + item.first + "'";
        throw EngineDirError("this engine directory (" + kind + ") has no '" + name + "' graph; it has [" + names +
                             "]");
    }
    return found->second;
}

std::vector<std::string> Manifest::bank_names() const {
    std::vector<std::string> names;
    char buffer[32];
    for (const char* prefix : {"key", "value"})
        for (size_t i = 0; i < layers.size(); ++i) {
            std::snprintf(buffer, sizeof buffer, "%s_%02zu", prefix, i);
            names.emplace_back(buffer);
        }
    return names;
}

std::vector<std::string> GraphSpec::input_names() const {
    std::vector<std::string> names;
    for (const auto& t : inputs) names.push_back(t.name);
    return names;
}

std::vector<std::string> GraphSpec::output_names() const {
    std::vector<std::string> names;
    for (const auto& t : outputs) names.push_back(t.name);
    return names;
}

const TensorSpec& GraphSpec::input(const std::string& wanted) const {
    for (const auto& t : inputs)
        if (t.name == wanted) return t;
    throw EngineDirError(name + ": no input named '" + wanted + "'");
}

std::string file_sha256(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw SystemError(path + ": " + std::strerror(errno));
    std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> context(EVP_MD_CTX_new(), EVP_MD_CTX_free);
    if (!context || EVP_DigestInit_ex(context.get(), EVP_sha256(), nullptr) != 1)
        throw SystemError("OpenSSL could not start a sha256 digest");
    std::vector<char> block(1 << 20);
    while (in) {
        in.read(block.data(), static_cast<std::streamsize>(block.size()));
        if (in.gcount() > 0) EVP_DigestUpdate(context.get(), block.data(), static_cast<size_t>(in.gcount()));
    }
    if (in.bad()) throw SystemError(path + ": read error");
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    EVP_DigestFinal_ex(context.get(), digest, &length);
    static const char* hex = "0123456789abcdef";
    std::string out;
    for (unsigned int i = 0; i < length; ++i) {
        out += hex[digest[i] >> 4];
        out += hex[digest[i] & 15];
    }
    return out;
}

}  // namespace diffseg
