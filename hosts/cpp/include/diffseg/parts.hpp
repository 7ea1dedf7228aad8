// SLiMe part segmentation from an engine directory (runtime/parts.py PartSegmenter):
//
//   auto seg = diffseg::PartSegmenter::open("engines/mushroom");     // backend "openvino"
//   diffseg::Mask labels = seg.segment(diffseg::read_image("m.png")); // (H, W): 0 = background,
//   seg.class_names();                                                // k = class_names()[k]
//
// The host cuts the patches (the manifest's layout unless overridden), runs part_segmenter on
// each crop, averages the overlapping score maps and takes the argmax, resizing as Pillow does
// (resample.hpp), so the labels equal the Python runtime's on the same backend. Thread-safe and
// deterministic as FewShotSegmenter is.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "diffseg/fewshot.hpp"

namespace diffseg {

class PartSegmenter {
   public:
    // `options.backend` "auto" means openvino (fp32) here: SLiMe's bf16 agreement is not measured
    // yet, so the Python runtime does not default to reduced precision for it either.
    // per_side / patch_size override the manifest's patch layout.
    static PartSegmenter open(const std::string& directory, const Options& options = {},
                              std::optional<int> per_side = std::nullopt, std::optional<int> patch_size = std::nullopt);

    // (H, W) part labels at the image's size; label k is class_names()[k], 0 the background.
    Mask segment(const Image& image) const;
    // (K, S, S) float32 overlap-averaged class scores at the output size S.
    std::vector<float> scores(const Image& image) const;

    const std::vector<std::string>& class_names() const { return manifest_.class_names; }
    const Patching& patching() const { return patching_; }
    const std::string& backend() const { return backend_; }

   private:
    PartSegmenter(Manifest manifest, const Options& options, std::optional<int> per_side, std::optional<int> patch_size);

    Manifest manifest_;
    Patching patching_;
    std::string backend_;
    std::unique_ptr<Graph> graph_;
};

}  // namespace diffseg
