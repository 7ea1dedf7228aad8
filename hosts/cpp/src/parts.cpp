#include "diffseg/parts.hpp"

#include <algorithm>
#include <cmath>

#include "diffseg/errors.hpp"
#include "diffseg/resample.hpp"

namespace diffseg {

PartSegmenter PartSegmenter::open(const std::string& directory, const Options& options, std::optional<int> per_side,
                                  std::optional<int> patch_size) {
    return PartSegmenter(Manifest::read(directory, options.verify), options, per_side, patch_size);
}

PartSegmenter::PartSegmenter(Manifest manifest, const Options& options, std::optional<int> per_side,
                             std::optional<int> patch_size)
    : manifest_(std::move(manifest)) {
    if (manifest_.kind != "slime")
        throw EngineDirError(manifest_.directory + " holds '" + manifest_.kind +
                             "' graphs, not a SLiMe part segmenter; use runtime.fewshot for DiffewS engines");
    patching_ = manifest_.patching;
    if (per_side) patching_.per_side = *per_side;
    if (patch_size) patching_.patch_size = *patch_size;
    patching_.check();
    backend_ = options.backend == "auto" ? "openvino" : resolve_backend(options.backend);
    graph_ = open_graph(manifest_, kPartSegmenter, backend_, options.threads);
}

std::vector<float> PartSegmenter::scores(const Image& image) const {
    const int size = patching_.output_size, side = patching_.side();
    const Image resized = resize_bilinear(image, size, size);
    std::vector<float> total, count(static_cast<size_t>(size) * size, 0.0f);
    size_t classes = 0;
    Image crop(side, side);
    for (const auto& [top, left] : patching_.origins()) {
        for (int y = 0; y < side; ++y)
            std::copy_n(&resized.pixels[(static_cast<size_t>(top + y) * size + left) * 3], side * 3,
                        &crop.pixels[static_cast<size_t>(y) * side * 3]);
        const auto outputs = graph_->run({{"image", "uint8", {side, side, 3}, crop.pixels.data()}});
        const HostTensor& out = outputs[0];  // (K, P, P)
        if (total.empty()) {
            classes = static_cast<size_t>(out.shape[0]);
            total.assign(classes * size * size, 0.0f);
        }
        const float* crop_scores = out.as<float>();
        for (size_t k = 0; k < classes; ++k)
            for (int y = 0; y < side; ++y)
                for (int x = 0; x < side; ++x)
                    total[(k * size + top + y) * size + left + x] += crop_scores[(k * side + y) * side + x];
        for (int y = 0; y < side; ++y)
            for (int x = 0; x < side; ++x) count[static_cast<size_t>(top + y) * size + left + x] += 1.0f;
    }
    // numpy: total / (count + 1e-7), all in float32
    for (size_t k = 0; k < classes; ++k)
        for (size_t i = 0; i < count.size(); ++i) total[k * count.size() + i] /= count[i] + 1e-7f;
    return total;
}

Mask PartSegmenter::segment(const Image& image) const {
    const std::vector<float> scores_ = scores(image);
    const int size = patching_.output_size;
    const size_t pixels = static_cast<size_t>(size) * size, classes = scores_.size() / pixels;
    if (classes > 256) throw InputError(std::to_string(classes) + " classes do not fit uint8 labels");
    Mask labels(size, size);
    for (size_t i = 0; i < pixels; ++i) {
        size_t best = 0;  // numpy's argmax: the first maximum, or the first NaN
        for (size_t k = 1; k < classes && !std::isnan(scores_[best * pixels + i]); ++k) {
            const float v = scores_[k * pixels + i];
            if (std::isnan(v) || v > scores_[best * pixels + i]) best = k;
        }
        labels.values[i] = static_cast<uint8_t>(best);
    }
    return resize_nearest(labels, image.height, image.width);
}

}  // namespace diffseg
