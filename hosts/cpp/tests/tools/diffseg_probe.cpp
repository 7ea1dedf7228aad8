// diffseg-probe: the library's image reading and resampling on one file, written as a PNG, so that
// tests/test_cpp_host.py can compare them with the Python runtime's (Pillow's) bit for bit.
//
//   diffseg-probe image IN OUT.png              # read_image: RGB
//   diffseg-probe mask IN OUT.png               # read_mask: grey 0 / 1
//   diffseg-probe resize-bilinear IN H W OUT.png
//   diffseg-probe resize-nearest IN H W OUT.png # IN's first channel as a label map
//   diffseg-probe select RULE BUDGET SEED SIDE MASK... # the kept token indices, one per line
#include <iostream>

#include "diffseg/manifest.hpp"

#include "cli.hpp"
#include "diffseg/image.hpp"
#include "diffseg/resample.hpp"

using namespace diffseg;

int main(int argc, char** argv) {
    const std::vector<std::string> args(argv + 1, argv + argc);
    if (args.size() < 3) {
        std::cerr << "usage: diffseg-probe image|mask IN OUT.png, or resize-bilinear|resize-nearest IN H W OUT.png\n";
        return cli::kUsage;
    }
    return cli::reporting_errors([&] {
        const std::string& what = args[0];
        if (what == "image") {
            write_png(args[2], read_image(args[1], "image"), true);
        } else if (what == "mask") {
            write_png(args[2], read_mask(args[1], "mask"), true);
        } else if (what == "resize-bilinear" && args.size() == 5) {
            write_png(args[4], resize_bilinear(read_image(args[1]), std::stoi(args[2]), std::stoi(args[3])), true);
        } else if (what == "resize-nearest" && args.size() == 5) {
            const Image image = read_image(args[1]);
            Mask labels(image.height, image.width);
            for (size_t i = 0; i < labels.values.size(); ++i) labels.values[i] = image.pixels[i * 3];
            write_png(args[4], resize_nearest(labels, std::stoi(args[2]), std::stoi(args[3])), true);
        } else if (what == "select" && args.size() >= 6) {
            SupportSelection selection{args[1], std::stoi(args[2]), std::stoull(args[3])};
            std::vector<Mask> masks;
            for (size_t i = 5; i < args.size(); ++i) masks.push_back(read_mask(args[i]));
            std::vector<const Mask*> shots;
            for (const auto& mask : masks) shots.push_back(&mask);
            const int side = std::stoi(args[4]);
            for (int64_t index : selection.indices(shots, side, side)) std::cout << index << "\n";
        } else {
            return cli::fail(cli::kUsage, "unknown probe " + what);
        }
        return 0;
    });
}
