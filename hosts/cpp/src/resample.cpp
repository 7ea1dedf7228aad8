// Pillow 13's resampling (its libImaging/Resample.c and Geometry.c), re-expressed for one RGB image
// and one grey label map so that the C++ host's SLiMe labels equal the Python runtime's. Bilinear
// is two separable passes with fixed-point coefficients (22 fraction bits, rounded, clipped);
// nearest steps through the source in double precision as Pillow's affine scaling does.
#include <algorithm>
#include <cmath>
#include <vector>

#include "diffseg/resample.hpp"

namespace diffseg {
namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;

// Per output pixel: the first source pixel, how many it reads, and their fixed-point weights.
struct Coefficients {
    int size = 0;  // taps per output pixel
    std::vector<int> first, count;
    std::vector<int32_t> weights;  // out_size * size
};

Coefficients bilinear_coefficients(int in_size, int out_size) {
    const double scale = static_cast<double>(static_cast<float>(in_size)) / out_size;
    const double filter_scale = std::max(scale, 1.0);
    const double support = 1.0 * filter_scale;  // the bilinear (triangle) filter's support is 1
    Coefficients out;
    out.size = static_cast<int>(std::ceil(support)) * 2 + 1;
    out.first.resize(out_size);
    out.count.resize(out_size);
    out.weights.assign(static_cast<size_t>(out_size) * out.size, 0);
    std::vector<double> k(out.size);
    for (int xx = 0; xx < out_size; ++xx) {
        const double center = (xx + 0.5) * scale;
        const double ss = 1.0 / filter_scale;
        int xmin = static_cast<int>(center - support + 0.5);
        xmin = std::max(xmin, 0);
        int xmax = static_cast<int>(center + support + 0.5);
        xmax = std::min(xmax, in_size) - xmin;
        double total = 0.0;
        for (int x = 0; x < xmax; ++x) {
            double t = std::fabs((x + xmin - center + 0.5) * ss);
            k[x] = t < 1.0 ? 1.0 - t : 0.0;
            total += k[x];
        }
        for (int x = 0; x < xmax; ++x) {
            const double w = total != 0.0 ? k[x] / total : k[x];
            out.weights[static_cast<size_t>(xx) * out.size + x] =
                static_cast<int32_t>(w < 0 ? -0.5 + w * (1 << kPrecisionBits) : 0.5 + w * (1 << kPrecisionBits));
        }
        out.first[xx] = xmin;
        out.count[xx] = xmax;
    }
    return out;
}

uint8_t clip8(int value) {
    const int shifted = value >> kPrecisionBits;
    return static_cast<uint8_t>(std::clamp(shifted, 0, 255));
}

// One separable pass: every output row (vertical) or column (horizontal) a weighted sum of source
// pixels, rows `first_row`.. of `source` read for the horizontal pass.
Image horizontal_pass(const Image& source, const Coefficients& k, int width, int first_row, int rows) {
    Image out(rows, width);
    for (int y = 0; y < rows; ++y)
        for (int xx = 0; xx < width; ++xx) {
            const int32_t* w = &k.weights[static_cast<size_t>(xx) * k.size];
            for (int c = 0; c < 3; ++c) {
                int sum = 1 << (kPrecisionBits - 1);
                for (int x = 0; x < k.count[xx]; ++x)
                    sum += source.pixels[(static_cast<size_t>(y + first_row) * source.width + x + k.first[xx]) * 3 + c] * w[x];
                out.pixels[(static_cast<size_t>(y) * width + xx) * 3 + c] = clip8(sum);
            }
        }
    return out;
}

Image vertical_pass(const Image& source, const Coefficients& k, int height, int row_offset) {
    Image out(height, source.width);
    for (int yy = 0; yy < height; ++yy) {
        const int32_t* w = &k.weights[static_cast<size_t>(yy) * k.size];
        const int ymin = k.first[yy] - row_offset;
        for (int x = 0; x < source.width; ++x)
            for (int c = 0; c < 3; ++c) {
                int sum = 1 << (kPrecisionBits - 1);
                for (int y = 0; y < k.count[yy]; ++y)
                    sum += source.pixels[(static_cast<size_t>(ymin + y) * source.width + x) * 3 + c] * w[y];
                out.pixels[(static_cast<size_t>(yy) * source.width + x) * 3 + c] = clip8(sum);
            }
    }
    return out;
}

}  // namespace

Image resize_bilinear(const Image& image, int height, int width) {
    if (image.height == height && image.width == width) return image;
    const bool horizontal = width != image.width, vertical = height != image.height;
    const Coefficients rows = bilinear_coefficients(image.height, height);
    const Coefficients columns = bilinear_coefficients(image.width, width);
    // Pillow 13 (its pull request 9549) runs the vertical pass first when the height shrinks by more
    // than twice as many pixels as the width does; before that, always the horizontal pass first.
    const int shrink_y = image.height - height, shrink_x = image.width - width;
    if (shrink_y > 0 && shrink_y > shrink_x * 2) {
        const Image tall = vertical ? vertical_pass(image, rows, height, 0) : image;
        return horizontal ? horizontal_pass(tall, columns, width, 0, height) : tall;
    }
    if (!horizontal) return vertical_pass(image, rows, height, 0);
    // Only the source rows the vertical pass reads are resampled horizontally.
    const int first_row = rows.first[0], last_row = rows.first[height - 1] + rows.count[height - 1];
    const Image wide = horizontal_pass(image, columns, width, first_row, last_row - first_row);
    return vertical ? vertical_pass(wide, rows, height, first_row) : wide;
}

Mask resize_nearest(const Mask& labels, int height, int width) {
    if (labels.height == height && labels.width == width) return labels;
    // Pillow: a = in / out (from float box sides), positions stepped from a / 2 by repeated addition.
    const double ax = static_cast<double>(static_cast<float>(labels.width)) / width;
    const double ay = static_cast<double>(static_cast<float>(labels.height)) / height;
    auto coord = [](double v) { return v < 0.0 ? -1 : static_cast<int>(v); };
    std::vector<int> columns(width, -1);
    double xo = ax * 0.5;
    for (int x = 0; x < width; ++x, xo += ax) {
        const int xin = coord(xo);
        if (xin >= 0 && xin < labels.width) columns[x] = xin;
    }
    Mask out(height, width);  // pixels outside the source (never, for a plain resize) stay 0
    double yo = ay * 0.5;
    for (int y = 0; y < height; ++y, yo += ay) {
        const int yin = coord(yo);
        if (yin < 0 || yin >= labels.height) continue;
        for (int x = 0; x < width; ++x)
            if (columns[x] >= 0) out.values[static_cast<size_t>(y) * width + x] = labels.values[static_cast<size_t>(yin) * labels.width + columns[x]];
    }
    return out;
}

}  // namespace diffseg
