// manifest.json of an engine directory (schema version 2): everything a host needs to run the
// graphs. Written by `python -m export.build_engine`; its JSON Schema is
// runtime/manifest.schema.json and its fields are described in docs/export.md.
//
//   auto manifest = diffseg::Manifest::read("engines/synth", /*verify=*/true);
//   manifest.graph("query_segmenter").spec.inputs[0].name;   // "image"
//   manifest.rules.shots.max;                                 // the largest support set
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace diffseg {

struct Mask;  // image.hpp

inline constexpr int kSchemaVersion = 2;
inline constexpr const char* kManifestFile = "manifest.json";

// DiffewS: the two graphs, cut at the support K/V bank. SLiMe: one graph.
inline constexpr const char* kSupportEncoder = "support_encoder";
inline constexpr const char* kQuerySegmenter = "query_segmenter";
inline constexpr const char* kPartSegmenter = "part_segmenter";

// A number as the manifest wrote it: JSON keeps 1 and 1.0 apart, and so do Python's messages.
struct Number {
    double value = 0.0;
    bool is_integer = false;
    std::string text() const;  // "1" or "1.0", as Python prints the parsed JSON value
};

// One graph input or output (runtime/contract.py TensorSpec).
struct TensorSpec {
    std::string name;
    std::string dtype;                   // "uint8" or "float32"
    std::vector<int64_t> shape;          // -1 where the axis is dynamic
    std::vector<std::string> axis_names; // the dynamic axes' names ("height"), "" where fixed
    std::vector<int64_t> min_shape, opt_shape, max_shape;

    std::string shape_text() const;  // "(shots, 256, 32)"
    // Throws InputError naming the problem when an array of `dtype` and `dims` cannot be fed as
    // this tensor (the Python runtime's TensorSpec.check, message for message).
    void check(const std::string& dtype, const std::vector<int64_t>& dims, const std::string& graph) const;
};

struct GraphSpec {
    std::string name;
    std::vector<TensorSpec> inputs, outputs;

    std::vector<std::string> input_names() const;
    std::vector<std::string> output_names() const;
    const TensorSpec& input(const std::string& name) const;  // throws EngineDirError when absent
};

struct TensorRTPlan {
    std::string file, sha256, tensorrt, compute_capability, precision;
};

struct GraphEntry {
    std::string file, sha256;
    std::map<std::string, std::string> external_data;  // file name -> sha256 (graphs over 2 GB)
    // May a backend computing in reduced precision (openvino-bf16) run this graph so?
    bool reduced_precision = true;
    GraphSpec spec;
    std::vector<TensorRTPlan> tensorrt_plans;
};

struct FusedLayer {
    std::string name;
    int64_t tokens = 0, channels = 0;
};

// The input rules a host enforces (the manifest's `rules`); the graphs check nothing themselves.
struct Rules {
    int64_t min_side = 0, max_side = 0;
    int64_t min_shots = 0, max_shots = 0;              // DiffewS only
    int64_t min_foreground_pixels = 1;                 // DiffewS only
    Number threshold_min, threshold_max;               // DiffewS only
    bool threshold_max_exclusive = true;

    // Each throws InputError with the Python runtime's message when its input breaks the rule.
    void check_size(int width, int height, const std::string& what) const;  // both sides in [min_side, max_side]
    void check_shots(size_t images, size_t masks) const;                     // one mask per image, shots in range
    double check_threshold(double value) const;                              // in the threshold range
};

// How a support set larger than its budget is reduced before the query graph reads it (the
// manifest's `support_selection`; runtime/support_selection.py says what each rule keeps). The
// kept tokens equal the Python runtime's, index for index.
struct SupportSelection {
    std::string rule = "all";  // "all", "uniform", "stratified" or "foreground"
    int budget_shots = 1;
    uint64_t seed = 0;
    double foreground_share = 0.5;

    bool reduces(size_t shots) const { return rule != "all" && shots > static_cast<size_t>(budget_shots); }
    // The kept tokens of one layer of an h x w grid: flat indices s * h * w + t, ascending; every
    // token when the bank is not reduced. `masks`: the shots' masks, non-zero = foreground.
    std::vector<int64_t> indices(const std::vector<const Mask*>& masks, int h, int w) const;
    std::string describe() const;  // as a saved bank records it
};

struct Readout {
    std::string mode;     // "relative" or "absolute"
    double threshold = 0; // the default, fed as the query graph's `threshold` input
    std::string decoder;  // "vae", "mask_head" or "mask_decoder"
};

// SLiMe's host-side patch layout (runtime/patches.py): the image is resized to output_size, then
// per_side x per_side crops of side patch_size (0: the whole output) are scored and averaged.
struct Patching {
    int output_size = 0;
    int per_side = 1;
    int patch_size = 0;  // 0: the whole output

    int side() const { return patch_size == 0 ? output_size : patch_size; }
    void check() const;                                 // throws InputError naming the bad field
    std::vector<std::pair<int, int>> origins() const;   // (top, left) of every crop, row by row
};

struct Manifest {
    std::string directory;
    std::string kind;        // "diffews" or "slime"
    std::string model_hash;  // sha256 of the source model: a saved support bank records it
    int resolution = 0;
    std::string precision;
    std::map<std::string, GraphEntry> graphs;
    Rules rules;
    // DiffewS
    Readout readout;
    int max_shots = 0;  // the largest support set the support encoder is asked to encode
    std::vector<FusedLayer> layers;
    SupportSelection selection;
    std::string profile = "custom";  // exact / default / fast / custom: `auto` never picks bf16 for exact
    // SLiMe
    std::vector<std::string> class_names;
    Patching patching;

    // Parses DIR/manifest.json and checks that every graph file is there; with `verify`, that
    // each file's sha256 is the one recorded. Throws EngineDirError saying what to rebuild.
    static Manifest read(const std::string& directory, bool verify = true);

    const GraphEntry& graph(const std::string& name) const;  // throws EngineDirError when absent
    // The bank tensors' names: key_00 ... key_{L-1}, value_00 ... (DiffewS).
    std::vector<std::string> bank_names() const;
};

// sha256 of a file's bytes as 64 lower-case hex digits (OpenSSL); throws SystemError when unreadable.
std::string file_sha256(const std::string& path);

}  // namespace diffseg
