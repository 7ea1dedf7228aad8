// diffseg-parts: SLiMe part segmentation with an engine directory, as `python -m runtime.parts`
// does (same flags, outputs, messages and exit codes).
//
//   diffseg-parts --engines engines/mushroom --image a.png [b.png ...] --out parts/
//
// Writes, per image, NAME_labels.png (the uint8 label map), NAME_parts.png (colourised) and
// NAME_overlay.png, each through a temporary file and a rename, and prints the class legend.
#include <CLI/CLI.hpp>

#include <array>
#include <chrono>
#include <cstdio>

#include "cli.hpp"
#include "diffseg/parts.hpp"

using namespace diffseg;

namespace {

// segdata/visualize.py PALETTE: label k is drawn in colour k % 10 (0, the background, black).
const std::vector<std::array<uint8_t, 3>> kPalette{{0, 0, 0},     {230, 25, 75},  {60, 180, 75},  {255, 225, 25},
                                                   {0, 130, 200}, {245, 130, 48}, {145, 30, 180}, {70, 240, 240},
                                                   {240, 50, 230}, {210, 245, 60}};

struct Arguments {
    std::string engines, out, backend = "auto";
    std::vector<std::string> images;
    std::optional<int> per_side, patch_size;
    int threads = 0;
    bool overwrite = false;
};

Image colourize(const Mask& labels) {
    Image out(labels.height, labels.width);
    for (size_t i = 0; i < labels.values.size(); ++i)
        std::copy_n(kPalette[labels.values[i] % kPalette.size()].data(), 3, &out.pixels[i * 3]);
    return out;
}

int run(const Arguments& args) {
    std::vector<std::string> names;
    for (const auto& image : args.images) names.push_back(cli::stem(image));
    const auto outputs = cli::check_outputs(args.out, names, {"labels", "parts", "overlay"}, args.overwrite);
    const PartSegmenter segmenter = PartSegmenter::open(cli::python_path(args.engines), {args.backend, args.threads},
                                                        args.per_side, args.patch_size);
    std::filesystem::create_directories(cli::python_path(args.out));
    const auto start = std::chrono::steady_clock::now();
    for (size_t i = 0; i < args.images.size(); ++i) {
        const std::string path = cli::python_path(args.images[i]);
        const Image image = read_image(path, "image " + path);
        const Mask labels = segmenter.segment(image);
        write_png(outputs[3 * i], labels, args.overwrite);
        write_png(outputs[3 * i + 1], colourize(labels), args.overwrite);
        write_png(outputs[3 * i + 2], overlay(image, labels, kPalette, 0.55), args.overwrite);
    }
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    std::string legend;
    for (size_t k = 0; k < segmenter.class_names().size(); ++k)
        legend += (k ? ", " : "") + std::to_string(k) + "=" + segmenter.class_names()[k];
    std::printf("%zu image(s) in %.0f ms (%.0f ms each, %zu crop(s) per image, %s); labels %s; written to %s\n",
                args.images.size(), ms, ms / args.images.size(), segmenter.patching().origins().size(),
                segmenter.backend().c_str(), legend.c_str(), cli::python_path(args.out).c_str());
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"SLiMe part segmentation with an engine directory built by export.build_engine --slime.",
                 "diffseg-parts"};
    Arguments args;
    app.add_option("--engines", args.engines, "engine directory from build_engine --slime")->required();
    app.add_option("--image", args.images, "images to segment")->required()->expected(1, 1 << 20);
    app.add_option("--out", args.out, "output folder")->required();
    app.add_option("--patches-per-side", args.per_side, "override the manifest's n x n crops");
    app.add_option("--patch-size", args.patch_size, "override the crop side (output pixels)");
    app.add_option("--backend", args.backend,
                   "what runs the graph (default auto: openvino, fp32; SLiMe's bf16 agreement is not measured)")
        ->check(CLI::IsMember({"auto", "openvino", "openvino-bf16", "tensorrt"}));
    app.add_option("--threads", args.threads, "inference threads (0: OpenVINO's default)")->check(CLI::NonNegativeNumber);
    app.add_flag("--overwrite", args.overwrite, "replace existing output files");
    if (const auto code = cli::parse(app, argc, argv)) return *code;
    return cli::reporting_errors([&] { return run(args); });
}
