// diffseg-segment: segment query images with a DiffewS engine directory and a few annotated
// supports, as `python -m runtime.segment` does (same flags, outputs, messages and exit codes).
//
//   diffseg-segment --engines engines/synth --support a.png --support-mask a_mask.png
//       [--support b.png --support-mask b_mask.png ...] --query q1.png [q2.png ...] --out masks/
//
// Writes, per query, NAME_mask.png (white on black) and NAME_overlay.png (the mask tinted over
// the image), each through a temporary file and a rename. --save-support / --load-support store
// or reuse the encoded support set (.npz, the same file the Python runtime reads and writes).
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>

#include "cli.hpp"
#include "diffseg/fewshot.hpp"

using namespace diffseg;

namespace {

struct Arguments {
    std::string engines, load_support, save_support, out, backend = "auto";
    std::vector<std::string> supports, support_masks, queries;
    std::optional<double> threshold;
    int threads = 0;
    bool overwrite = false;
};

double milliseconds_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

int run(const Arguments& args) {
    std::vector<std::string> names;
    for (const auto& query : args.queries) names.push_back(cli::stem(query));
    // Every output location is checked before the (slow) engines load and supports encode.
    const auto outputs = cli::check_outputs(args.out, names, {"mask", "overlay"}, args.overwrite);
    if (!args.save_support.empty()) check_writable(cli::python_path(args.save_support), args.overwrite);
    FewShotSegmenter segmenter = FewShotSegmenter::open(cli::python_path(args.engines), {args.backend, args.threads});
    auto start = std::chrono::steady_clock::now();
    if (!args.load_support.empty()) {
        segmenter.load_support(cli::python_path(args.load_support));
    } else {
        segmenter.rules().check_shots(args.supports.size(), args.support_masks.size());
        std::vector<Image> images;
        std::vector<Mask> masks;
        for (size_t shot = 0; shot < args.supports.size(); ++shot) {
            try {  // read and checked shot by shot, as the Python runtime does
                images.push_back(read_image(cli::python_path(args.supports[shot]), "support image"));
                masks.push_back(read_mask(cli::python_path(args.support_masks[shot]), "support mask"));
                check_pair(images.back(), masks.back(), "support");
                segmenter.rules().check_size(images.back().width, images.back().height, "support");
            } catch (const MissingFileError&) {
                throw;
            } catch (const InputError& err) {
                throw InputError("support shot " + std::to_string(shot) + ": " + err.what());
            }
        }
        segmenter.set_support(images, masks);
    }
    const double support_ms = milliseconds_since(start);
    if (!args.save_support.empty()) segmenter.save_support(cli::python_path(args.save_support), args.overwrite);
    std::filesystem::create_directories(cli::python_path(args.out));
    start = std::chrono::steady_clock::now();
    for (size_t i = 0; i < args.queries.size(); ++i) {
        const std::string path = cli::python_path(args.queries[i]);
        const Image image = read_image(path, "query " + path);
        Mask mask = segmenter.segment(image, args.threshold);
        const Image tinted = overlay(image, mask, {{0, 0, 0}, {255, 64, 32}}, 0.5);
        for (auto& v : mask.values) v = v ? 255 : 0;
        write_png(outputs[2 * i], mask, args.overwrite);
        write_png(outputs[2 * i + 1], tinted, args.overwrite);
    }
    const double query_ms = milliseconds_since(start);
    std::printf("%d support shot(s) in %.0f ms; %zu queries in %.0f ms (%.0f ms each) on %s; masks in %s\n",
                segmenter.shots(), support_ms, args.queries.size(), query_ms, query_ms / args.queries.size(),
                segmenter.backend().c_str(), cli::python_path(args.out).c_str());
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"Segment query images with a DiffewS engine directory and a few annotated supports.",
                 "diffseg-segment"};
    Arguments args;
    app.add_option("--engines", args.engines, "engine directory from export.build_engine")->required();
    app.add_option("--support", args.supports, "support image (repeat per shot)")->expected(1)->take_all();
    app.add_option("--support-mask", args.support_masks, "its mask, foreground non-zero")->expected(1)->take_all();
    app.add_option("--load-support", args.load_support, "a support set saved with --save-support");
    app.add_option("--save-support", args.save_support, "write the encoded support set (.npz)");
    app.add_option("--query", args.queries, "query images")->required()->expected(1, 1 << 20);
    app.add_option("--out", args.out, "output folder for masks and overlays")->required();
    app.add_option("--threshold", args.threshold, "override the manifest's read-out threshold");
    app.add_option("--backend", args.backend,
                   "what runs the graphs (default auto: openvino-bf16 on a CPU with bf16, else openvino; openvino for "
                   "the PyTorch pipeline's exact masks)")
        ->check(CLI::IsMember({"auto", "openvino", "openvino-bf16", "tensorrt"}));
    app.add_option("--threads", args.threads, "inference threads (0: OpenVINO's default)")->check(CLI::NonNegativeNumber);
    app.add_flag("--overwrite", args.overwrite, "replace existing output files");
    if (const auto code = cli::parse(app, argc, argv)) return *code;
    if (args.load_support.empty() && args.supports.empty())
        return cli::fail(cli::kUsage, "give supports (--support IMG --support-mask MASK, repeated) or --load-support FILE");
    if (!args.load_support.empty() && !args.supports.empty())
        return cli::fail(cli::kUsage, "give either --support pairs or --load-support, not both");
    if (args.supports.size() != args.support_masks.size())
        return cli::fail(cli::kUsage, std::to_string(args.supports.size()) + " --support images but " +
                                          std::to_string(args.support_masks.size()) + " --support-mask files");
    return cli::reporting_errors([&] { return run(args); });
}
