#include "diffseg/fewshot.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "diffseg/bank_file.hpp"
#include "diffseg/errors.hpp"

namespace diffseg {
namespace {

size_t element_count(const std::vector<int64_t>& shape) {
    size_t count = 1;
    for (int64_t d : shape) count *= static_cast<size_t>(d);
    return count;
}

}  // namespace

size_t SupportBank::host_bytes() const {
    size_t bytes = resident ? resident->host_bytes() : 0;
    for (const auto& array : values) bytes += array.size() * sizeof(float);
    return bytes;
}

FewShotSegmenter FewShotSegmenter::open(const std::string& directory, const Options& options) {
    return FewShotSegmenter(Manifest::read(directory, options.verify), options);
}

FewShotSegmenter::FewShotSegmenter(Manifest manifest, const Options& options)
    : manifest_(std::move(manifest)), support_lock_(std::make_unique<std::mutex>()), identity_(new char) {
    const std::string& dir = manifest_.directory;
    if (manifest_.kind != "diffews")
        throw EngineDirError(dir + " holds '" + manifest_.kind + "' graphs, not DiffewS; use the matching runtime class");
    try {
        threshold_ = manifest_.rules.check_threshold(manifest_.readout.threshold);
    } catch (const InputError& err) {
        throw EngineDirError(dir + ": the manifest's read-out " + err.what() + "; rebuild the engines");
    }
    bank_names_ = manifest_.bank_names();
    const auto support_out = manifest_.graph(kSupportEncoder).spec.output_names();
    std::vector<std::string> query_bank;
    for (const auto& name : manifest_.graph(kQuerySegmenter).spec.input_names())
        if (name != "image" && name != "threshold") query_bank.push_back(name);
    if (support_out != bank_names_ || query_bank != bank_names_)  // checked before the slow compile
        throw EngineDirError(dir + ": the manifest's " + std::to_string(manifest_.layers.size()) +
                             " layers do not match its graphs' bank tensors (support encoder outputs " +
                             std::to_string(support_out.size()) + ", query bank inputs " +
                             std::to_string(query_bank.size()) + "); rebuild the engines");
    backend_ = resolve_backend(options.backend, manifest_.profile != "exact");  // exact: the fp32 masks
    support_encoder_ = open_graph(manifest_, kSupportEncoder, backend_, options.threads);
    query_segmenter_ = open_graph(manifest_, kQuerySegmenter, backend_, options.threads);
}

FewShotSegmenter::FewShotSegmenter(FewShotSegmenter&&) noexcept = default;
FewShotSegmenter::~FewShotSegmenter() = default;

// ------------------------------------------------------------------ supports

std::shared_ptr<const SupportBank> FewShotSegmenter::make_bank(std::vector<std::vector<float>> values,
                                                               std::vector<std::vector<int64_t>> shapes,
                                                               int support_shots, std::string selection) const {
    const GraphSpec& query = query_segmenter_->spec();
    int shots = -1;
    std::string odd;
    for (size_t i = 0; i < bank_names_.size(); ++i) {
        query.input(bank_names_[i]).check("float32", shapes[i], "support bank");
        if (shots < 0) shots = static_cast<int>(shapes[i][0]);
        if (shapes[i][0] != shots && odd.empty()) odd = bank_names_[i] + " " + std::to_string(shapes[i][0]);
    }
    if (!odd.empty()) {
        std::vector<int64_t> counts;
        for (const auto& shape : shapes)
            if (std::find(counts.begin(), counts.end(), shape[0]) == counts.end()) counts.push_back(shape[0]);
        std::sort(counts.begin(), counts.end());
        std::string listed = "[";
        for (size_t i = 0; i < counts.size(); ++i) listed += (i ? ", " : "") + std::to_string(counts[i]);
        throw InputError("the bank's tensors hold different numbers of shots (" + listed + "]; " + bank_names_[0] +
                         " has " + std::to_string(shots) + ", " + odd + "): it is damaged; recompute it with set_support");
    }
    for (size_t i = 0; i < bank_names_.size(); ++i)
        for (float v : values[i])
            if (!std::isfinite(v))
                throw InputError("bank tensor '" + bank_names_[i] +
                                 "' has NaN or infinite values: it is damaged; recompute it");
    auto bank = std::make_shared<SupportBank>();
    bank->shots = support_shots > 0 ? support_shots : shots;
    bank->selection = std::move(selection);
    bank->names = bank_names_;
    bank->shapes = std::move(shapes);
    bank->values = std::move(values);
    std::vector<TensorView> views;
    for (size_t i = 0; i < bank->names.size(); ++i)
        views.push_back({bank->names[i], "float32", bank->shapes[i], bank->values[i].data()});
    bank->resident = query_segmenter_->upload(views);  // reads the bank's own arrays, which never change
    bank->owner = identity_.get();
    return bank;
}

std::shared_ptr<const SupportBank> FewShotSegmenter::encode_support(const std::vector<Image>& images,
                                                                    const std::vector<Mask>& masks) const {
    manifest_.rules.check_shots(images.size(), masks.size());
    std::vector<std::vector<float>> values(bank_names_.size());
    std::vector<std::vector<int64_t>> shapes(bank_names_.size());
    for (size_t shot = 0; shot < images.size(); ++shot) {
        const Image& image = images[shot];
        const Mask& mask = masks[shot];
        std::vector<HostTensor> outputs;
        try {
            check_pair(image, mask, "support");
            manifest_.rules.check_size(image.width, image.height, "support");
            // the runtime's masks are 0 / 1 (foreground where non-zero), as load_mask makes them
            std::vector<uint8_t> binary(mask.values.size());
            for (size_t i = 0; i < binary.size(); ++i) binary[i] = mask.values[i] != 0;
            outputs = support_encoder_->run({{"image", "uint8", {image.height, image.width, 3}, image.pixels.data()},
                                             {"mask", "uint8", {mask.height, mask.width}, binary.data()}});
        } catch (const InputError& err) {
            throw InputError("support shot " + std::to_string(shot) + ": " + err.what());
        }
        for (size_t i = 0; i < bank_names_.size(); ++i) {  // (1, N, C) per shot, stacked along axis 0
            const HostTensor& out = outputs[i];
            const auto* data = out.as<float>();
            values[i].insert(values[i].end(), data, data + element_count(out.shape));
            if (shapes[i].empty()) shapes[i] = out.shape;
            else shapes[i][0] += out.shape[0];
        }
    }
    const SupportSelection& selection = manifest_.selection;
    const bool reduced = selection.reduces(images.size());
    if (reduced) {
        std::vector<const Mask*> shot_masks;
        for (const auto& mask : masks) shot_masks.push_back(&mask);
        for (size_t i = 0; i < bank_names_.size(); ++i) {
            const int64_t tokens = shapes[i][1], channels = shapes[i][2];
            const int side = static_cast<int>(std::lround(std::sqrt(static_cast<double>(tokens))));
            if (static_cast<int64_t>(side) * side != tokens)
                throw EngineDirError(manifest_.directory + ": a layer of " + std::to_string(tokens) +
                                     " tokens is not a square grid; rebuild the engines");
            const std::vector<int64_t> keep = selection.indices(shot_masks, side, side);
            std::vector<float> kept(keep.size() * channels);
            for (size_t k = 0; k < keep.size(); ++k)
                std::copy_n(&values[i][keep[k] * channels], channels, &kept[k * channels]);
            values[i] = std::move(kept);
            shapes[i][0] = static_cast<int64_t>(keep.size()) / tokens;
        }
    }
    return make_bank(std::move(values), std::move(shapes), static_cast<int>(images.size()),
                     reduced ? selection.describe() : "all");
}

void FewShotSegmenter::set_support(const std::vector<Image>& images, const std::vector<Mask>& masks) {
    auto bank = encode_support(images, masks);  // complete before it replaces the old one
    std::lock_guard<std::mutex> lock(*support_lock_);
    support_ = std::move(bank);
}

std::shared_ptr<const SupportBank> FewShotSegmenter::read_support(const std::string& path) const {
    const BankFileContents contents = read_bank_file(path, manifest_.model_hash);
    std::vector<std::string> missing;
    for (const auto& name : bank_names_)
        if (!contents.arrays.count(name)) missing.push_back(name);
    try {
        if (!missing.empty()) {
            const std::vector<std::string> first(missing.begin(), missing.begin() + std::min<size_t>(3, missing.size()));
            throw InputError("the bank lacks tensors " + python_list(first) + (missing.size() > 3 ? " ..." : ""));
        }
        std::vector<std::vector<float>> values;
        std::vector<std::vector<int64_t>> shapes;
        for (const auto& name : bank_names_) {
            const StoredArray& array = contents.arrays.at(name);
            query_segmenter_->spec().input(name).check(array.dtype, array.shape, "support bank");
            std::vector<float> data(array.bytes.size() / sizeof(float));
            std::memcpy(data.data(), array.bytes.data(), data.size() * sizeof(float));
            values.push_back(std::move(data));
            shapes.push_back(array.shape);
        }
        const auto recorded = contents.meta.find("support_shots");
        const bool counted = recorded != contents.meta.end() && !recorded->second.empty() &&
                             recorded->second.find_first_not_of("0123456789") == std::string::npos;
        const auto how = contents.meta.find("selection");  // the file's own record, not these engines' rule
        return make_bank(std::move(values), std::move(shapes), counted ? std::stoi(recorded->second) : 0,
                         how != contents.meta.end() && !how->second.empty() ? how->second : "all");
    } catch (const InputError& err) {
        throw InputError(path + ": " + err.what());
    }
}

void FewShotSegmenter::load_support(const std::string& path) {
    auto bank = read_support(path);
    std::lock_guard<std::mutex> lock(*support_lock_);
    support_ = std::move(bank);
}

void FewShotSegmenter::save_support(const std::string& path, bool overwrite) const {
    const auto bank = require_support();
    std::vector<BankTensor> tensors;
    for (size_t i = 0; i < bank->names.size(); ++i) tensors.push_back({bank->names[i], bank->shapes[i], bank->values[i].data()});
    write_bank_file(path, tensors, manifest_.model_hash, overwrite,
                    {{"backend", backend_},
                     {"support_shots", std::to_string(bank->shots)},
                     {"selection", bank->selection}});
}

int FewShotSegmenter::shots() const {
    const auto bank = cached();
    return bank ? bank->shots : 0;
}

std::shared_ptr<const SupportBank> FewShotSegmenter::cached() const {
    std::lock_guard<std::mutex> lock(*support_lock_);
    return support_;
}

std::shared_ptr<const SupportBank> FewShotSegmenter::require_support() const {
    auto bank = cached();
    if (!bank) throw InputError("no support set: call set_support(images, masks) or load_support(path) first");
    return bank;
}

// ------------------------------------------------------------------ queries

Mask FewShotSegmenter::segment(const Image& query, std::optional<double> threshold, const SupportBank* support) const {
    std::shared_ptr<const SupportBank> held;  // keeps the cached bank alive through the call
    if (!support) {
        held = require_support();  // read once: a concurrent set_support cannot change it mid-call
        support = held.get();
    } else if (support->owner != identity_.get()) {
        throw InputError(
            "support must be a SupportBank from this segmenter's encode_support or read_support, got one made by "
            "another segmenter");
    }
    const float cut = static_cast<float>(threshold ? manifest_.rules.check_threshold(*threshold) : threshold_);
    manifest_.rules.check_size(query.width, query.height, "query");
    const auto outputs = query_segmenter_->run(
        {{"image", "uint8", {query.height, query.width, 3}, query.pixels.data()}, {"threshold", "float32", {}, &cut}},
        support->resident.get());
    const HostTensor& out = outputs[0];
    Mask mask(static_cast<int>(out.shape[0]), static_cast<int>(out.shape[1]));
    mask.values.assign(out.bytes.begin(), out.bytes.end());
    return mask;
}

}  // namespace diffseg
