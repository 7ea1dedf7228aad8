// Images and masks in memory, and reading them from PNG files by the Python runtime's rules
// (runtime/images.py), so that the same file gives the same pixels in both:
//
// Images -> (H, W, 3) uint8 RGB: grey is replicated, a palette is looked up, alpha is dropped;
// 1-, 2- and 4-bit grey are scaled to 0..255; 16-bit grey is scaled (v * 255 + 32767) / 65535;
// 16-bit colour channels keep their high byte (as Pillow decodes them).
// Masks -> (H, W) uint8 in {0, 1}: palette, grey and 16-bit grey PNGs are foreground where the
// value (the palette index) is non-zero; RGB where any channel is; with an alpha channel, where
// the colour is non-zero if the alpha agrees with it or is fully opaque, else the mask is refused
// as ambiguous.
// Both apply the EXIF orientation (a PNG eXIf chunk) as an image viewer does.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace diffseg {

// (H, W, 3) uint8 RGB, rows top to bottom.
struct Image {
    int height = 0, width = 0;
    std::vector<uint8_t> pixels;  // height * width * 3

    Image() = default;
    Image(int h, int w) : height(h), width(w), pixels(static_cast<size_t>(h) * w * 3) {}
};

// (H, W) uint8. A support mask holds 0 / 1 (foreground where non-zero); a label map holds labels.
struct Mask {
    int height = 0, width = 0;
    std::vector<uint8_t> values;  // height * width

    Mask() = default;
    Mask(int h, int w) : height(h), width(w), values(static_cast<size_t>(h) * w) {}
    bool any() const;
};

// A PNG file as an RGB image. `what` names it in errors ("support image", "query q.png").
// Throws MissingFileError when absent, InputError when it is not a readable PNG.
Image read_image(const std::string& path, const std::string& what = "image");
// A PNG file as a 0 / 1 mask, by the rules above. Throws as read_image, and InputError when an
// alpha channel and the colour disagree.
Mask read_mask(const std::string& path, const std::string& what = "mask");

// Writes an 8-bit grey (labels, masks) or RGB PNG through a temporary file and a rename, so a
// failed write keeps an existing file. Throws OutputError when `path` exists without `overwrite`
// or is a folder, SystemError when the write fails.
void write_png(const std::string& path, const Mask& grey, bool overwrite);
void write_png(const std::string& path, const Image& rgb, bool overwrite);

// Raises InputError when a support mask does not fit its image or marks nothing (runtime/images.py check_pair).
void check_pair(const Image& image, const Mask& mask, const std::string& what);

// (H, W, 3): `image` with the pixels where `mask` is non-zero tinted, mask value v taking
// colours[v % colours.size()]: out = image * (1 - alpha) + colour * alpha in float32, rounded half
// to even (segdata/visualize.py overlay_mask without its outline).
Image overlay(const Image& image, const Mask& mask, const std::vector<std::array<uint8_t, 3>>& colours, double alpha);

}  // namespace diffseg
