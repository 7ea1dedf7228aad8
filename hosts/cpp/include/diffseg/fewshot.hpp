// DiffewS few-shot segmentation from an engine directory, with the support set encoded once
// (runtime/fewshot.py FewShotSegmenter, the same calls):
//
//   auto seg = diffseg::FewShotSegmenter::open("engines/synth");           // backend "auto"
//   seg.set_support({diffseg::read_image("a.png")}, {diffseg::read_mask("a_mask.png")});
//   diffseg::Mask mask = seg.segment(diffseg::read_image("q.png"));        // (H, W) in {0, 1}
//   seg.save_support("cats.npz");                                          // the Python runtime loads it
//
// Thread-safe: one instance may serve many threads. segment() calls run concurrently, each
// returning its own query's mask; set_support / load_support build the new bank completely and
// then swap it in, so every segment() uses either the old or the new support set, never a mix.
// A call that throws leaves the instance as it was. Deterministic: the same support set and
// query give the same mask on every call, and the Python runtime's mask on the same backend.
#pragma once

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "diffseg/graph.hpp"
#include "diffseg/image.hpp"
#include "diffseg/manifest.hpp"

namespace diffseg {

struct Options {
    std::string backend = "auto";  // see graph.hpp
    int threads = 0;               // inference threads per call; 0: the backend's default
    bool verify = true;            // check every file's sha256 against the manifest when opening
};

// An encoded support set, never changed once made (a new support set is a new bank).
struct SupportBank {
    int shots = 0;                              // S, the support shots encoded
    std::string selection = "all";              // how its tokens were kept: "all", or the rule that reduced it
    std::vector<std::string> names;             // key_00 ... value_{L-1}
    // per name: (B, N_l, C_l), B = S, or the selection's budget when S was larger (manifest.hpp)
    std::vector<std::vector<int64_t>> shapes;
    std::vector<std::vector<float>> values;     // per name, C order
    std::shared_ptr<const Resident> resident;   // where the query graph reads them
    const void* owner = nullptr;                // the segmenter that made it: only its own banks are used
    size_t host_bytes() const;                  // the arrays plus the backend's copy, if it makes one
};

class FewShotSegmenter {
   public:
    // Opens an engine directory built by `python -m export.build_engine`. Throws EngineDirError
    // (missing, modified or malformed directory, or not DiffewS), BackendError (backend missing here).
    static FewShotSegmenter open(const std::string& directory, const Options& options = {});

    FewShotSegmenter(FewShotSegmenter&&) noexcept;
    ~FewShotSegmenter();

    // --- supports
    // Encodes n shots (image i with mask i, each pair of one size, sizes free) -> their bank,
    // reduced to the manifest's selection budget when n is larger; nothing is cached. Throws
    // InputError with the Python runtime's messages.
    std::shared_ptr<const SupportBank> encode_support(const std::vector<Image>& images,
                                                      const std::vector<Mask>& masks) const;
    // encode_support, then caches the bank for every later segment().
    void set_support(const std::vector<Image>& images, const std::vector<Mask>& masks);
    // A bank written by save_support (here or in Python) from the same model, checked whole.
    std::shared_ptr<const SupportBank> read_support(const std::string& path) const;
    void load_support(const std::string& path);
    // Writes the cached bank (a .npz the Python runtime reads) through a temporary file.
    void save_support(const std::string& path, bool overwrite = false) const;
    int shots() const;  // of the cached bank; 0 without one

    // --- queries
    // The query's mask, (H, W) in {0, 1} at the query's size, against `support` (a bank of this
    // segmenter) or the cached one. `threshold` overrides the manifest's read-out threshold; it
    // must lie in the manifest's rules.threshold range.
    Mask segment(const Image& query, std::optional<double> threshold = std::nullopt,
                 const SupportBank* support = nullptr) const;

    // The input rules (check_size, check_shots, check_threshold), for a service that checks
    // before it decodes.
    const Rules& rules() const { return manifest_.rules; }
    const Manifest& manifest() const { return manifest_; }
    const std::string& backend() const { return backend_; }

   private:
    FewShotSegmenter(Manifest manifest, const Options& options);
    std::shared_ptr<const SupportBank> make_bank(std::vector<std::vector<float>> values,
                                                 std::vector<std::vector<int64_t>> shapes, int shots = 0,
                                                 std::string selection = "all") const;
    std::shared_ptr<const SupportBank> cached() const;
    std::shared_ptr<const SupportBank> require_support() const;

    Manifest manifest_;
    std::string backend_;
    std::vector<std::string> bank_names_;
    double threshold_ = 0.0;
    std::unique_ptr<Graph> support_encoder_, query_segmenter_;
    std::shared_ptr<const SupportBank> support_;  // replaced whole, never changed
    mutable std::unique_ptr<std::mutex> support_lock_;  // guards the pointer only, not inference
    std::unique_ptr<char> identity_;  // what a bank's `owner` points at: stable when the segmenter moves
};

}  // namespace diffseg
