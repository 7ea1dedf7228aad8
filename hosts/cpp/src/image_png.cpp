// PNG files in and out (libpng), read by the Python runtime's rules (include/diffseg/image.hpp).
//
// libpng reports errors by longjmp: the functions that call it keep their own state in a heap
// object made before setjmp, so nothing a longjmp skips needs destroying.
#include <libexif/exif-data.h>
#include <png.h>

#include <cctype>
#include <cerrno>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <regex>

#include "diffseg/errors.hpp"
#include "diffseg/files.hpp"
#include "diffseg/image.hpp"

namespace diffseg {
namespace {

// Pillow refuses images over twice its MAX_IMAGE_PIXELS as decompression bombs.
constexpr uint64_t kMaxPixels = 2ull * 89478485ull;

// What a PNG holds, before the reading rules: every sample as stored (bit depths below 8 unscaled).
struct Decoded {
    int width = 0, height = 0, bit_depth = 0, color_type = 0, channels = 0;
    std::vector<uint16_t> samples;  // height * width * channels
    std::vector<png_color> palette;
    std::vector<uint8_t> exif;      // an eXIf chunk (a TIFF structure), before or after the pixels
    std::string xmp;                // the XML:com.adobe.xmp text chunk
    std::string raw_profile_exif;   // ImageMagick's "Raw profile type exif" text chunk
    std::string error;
    // libpng's row buffers, kept here rather than on decode()'s stack, which a longjmp unwinds
    std::vector<png_byte> rows;
    std::vector<png_bytep> row_pointers;

    uint16_t at(int y, int x, int c) const { return samples[(static_cast<size_t>(y) * width + x) * channels + c]; }
};

void on_error(png_structp png, png_const_charp message) {
    static_cast<Decoded*>(png_get_error_ptr(png))->error = message;
    png_longjmp(png, 1);
}

void on_warning(png_structp, png_const_charp) {}

void collect_text(png_structp png, png_infop info, Decoded* out) {
    png_textp text = nullptr;
    int count = 0;
    png_get_text(png, info, &text, &count);
    for (int i = 0; i < count; ++i) {
        const std::string key = text[i].key;
        const std::string value(text[i].text, text[i].itxt_length ? text[i].itxt_length : text[i].text_length);
        if (key == "XML:com.adobe.xmp") out->xmp = value;
        if (key == "Raw profile type exif") out->raw_profile_exif = value;
    }
    png_uint_32 size = 0;
    png_bytep exif = nullptr;
    if (png_get_eXIf_1(png, info, &size, &exif) && size) out->exif.assign(exif, exif + size);
}

// Fills `out` from an open PNG file; false (with out->error) when libpng gives up.
bool decode(FILE* file, Decoded* out) {
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, out, on_error, on_warning);
    if (!png) {
        out->error = "libpng could not start";
        return false;
    }
    png_infop info = png_create_info_struct(png);
    png_infop end = png_create_info_struct(png);
    if (!info || !end || setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, &info, &end);
        return false;
    }
    png_init_io(png, file);
    png_set_user_limits(png, 0x7fffffff, 0x7fffffff);
    png_read_info(png, info);
    out->width = static_cast<int>(png_get_image_width(png, info));
    out->height = static_cast<int>(png_get_image_height(png, info));
    out->bit_depth = png_get_bit_depth(png, info);
    out->color_type = png_get_color_type(png, info);
    if (static_cast<uint64_t>(out->width) * out->height > kMaxPixels) {
        out->error = "larger than the decompression-bomb limit of " + std::to_string(kMaxPixels) + " pixels";
        png_destroy_read_struct(&png, &info, &end);
        return false;
    }
    if (out->color_type == PNG_COLOR_TYPE_PALETTE) {
        png_colorp colours = nullptr;
        int count = 0;
        if (png_get_PLTE(png, info, &colours, &count)) out->palette.assign(colours, colours + count);
    }
    if (out->bit_depth < 8) png_set_packing(png);  // one byte per sample, values unscaled
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    out->channels = png_get_channels(png, info);
    const size_t row_bytes = png_get_rowbytes(png, info);
    out->rows.resize(row_bytes * out->height);
    out->row_pointers.resize(out->height);
    for (int y = 0; y < out->height; ++y) out->row_pointers[y] = out->rows.data() + row_bytes * y;
    png_read_image(png, out->row_pointers.data());
    png_read_end(png, end);
    collect_text(png, info, out);
    collect_text(png, end, out);
    const size_t count = static_cast<size_t>(out->width) * out->height * out->channels;
    out->samples.resize(count);
    for (int y = 0; y < out->height; ++y) {
        const png_byte* row = out->row_pointers[y];
        for (size_t i = 0, n = static_cast<size_t>(out->width) * out->channels; i < n; ++i)
            out->samples[y * n + i] = out->bit_depth == 16 ? static_cast<uint16_t>(row[2 * i] << 8 | row[2 * i + 1])
                                                           : row[i];
    }
    png_destroy_read_struct(&png, &info, &end);
    out->rows.clear();
    out->rows.shrink_to_fit();
    return true;
}

// The EXIF orientation tag (0x0112) of IFD 0, or 0 when there is none.
int exif_orientation(const std::vector<uint8_t>& tiff) {
    // libexif expects the "Exif\0\0" header that Pillow also puts before an eXIf chunk's data.
    std::vector<uint8_t> data{'E', 'x', 'i', 'f', 0, 0};
    data.insert(data.end(), tiff.begin(), tiff.end());
    std::unique_ptr<ExifData, decltype(&exif_data_unref)> exif(exif_data_new_from_data(data.data(), data.size()),
                                                               exif_data_unref);
    if (!exif) return 0;
    ExifEntry* entry = exif_content_get_entry(exif->ifd[EXIF_IFD_0], EXIF_TAG_ORIENTATION);
    if (!entry || entry->format != EXIF_FORMAT_SHORT || entry->components < 1) return 0;
    return exif_get_short(entry->data, exif_data_get_byte_order(exif.get()));
}

// The orientation Pillow's exif_transpose would apply: EXIF first, then XMP's tiff:Orientation.
int orientation(const Decoded& png, const std::string& what) {
    std::vector<uint8_t> tiff = png.exif;
    if (tiff.empty() && !png.raw_profile_exif.empty()) {
        // "\nexif\n   LENGTH\nHEX...": Pillow reads the hex digits after the third line break,
        // whitespace ignored (bytes.fromhex).
        size_t at = std::string::npos;
        for (int line = 0; line < 3; ++line) {
            at = png.raw_profile_exif.find('\n', at == std::string::npos ? 0 : at + 1);
            if (at == std::string::npos) break;
        }
        std::string hex;
        if (at != std::string::npos)
            for (char c : png.raw_profile_exif.substr(at + 1))
                if (!std::isspace(static_cast<unsigned char>(c))) hex += c;
        for (size_t i = 0; i < hex.size(); i += 2) {
            if (i + 1 == hex.size() || !std::isxdigit(static_cast<unsigned char>(hex[i])) ||
                !std::isxdigit(static_cast<unsigned char>(hex[i + 1])))
                throw InputError(what + ": its EXIF orientation cannot be read (the Raw profile type exif text is "
                                        "not hexadecimal)");
            tiff.push_back(static_cast<uint8_t>(std::stoi(hex.substr(i, 2), nullptr, 16)));
        }
    }
    if (const int value = tiff.empty() ? 0 : exif_orientation(tiff)) return value;
    static const std::regex xmp_orientation("tiff:Orientation(=\"|>)([0-9])");
    std::smatch match;
    if (!png.xmp.empty() && std::regex_search(png.xmp, match, xmp_orientation)) return std::stoi(match[2]);
    return 1;
}

// Applies EXIF orientation 2..8 (Pillow's transposes) to every sample; other values change nothing.
void orient(Decoded& png, int value) {
    if (value < 2 || value > 8) return;
    const int h = png.height, w = png.width, c = png.channels;
    const bool swaps = value >= 5;  // 5..8 exchange width and height
    const int out_h = swaps ? w : h, out_w = swaps ? h : w;
    std::vector<uint16_t> out(png.samples.size());
    for (int r = 0; r < out_h; ++r)
        for (int col = 0; col < out_w; ++col) {
            int y = r, x = col;  // the source pixel of output (r, col)
            switch (value) {
                case 2: x = w - 1 - col; break;                     // FLIP_LEFT_RIGHT
                case 3: y = h - 1 - r; x = w - 1 - col; break;      // ROTATE_180
                case 4: y = h - 1 - r; break;                       // FLIP_TOP_BOTTOM
                case 5: y = col; x = r; break;                      // TRANSPOSE
                case 6: y = h - 1 - col; x = r; break;              // ROTATE_270 (clockwise)
                case 7: y = h - 1 - col; x = w - 1 - r; break;      // TRANSVERSE
                case 8: y = col; x = w - 1 - r; break;              // ROTATE_90 (counter-clockwise)
            }
            for (int k = 0; k < c; ++k) out[(static_cast<size_t>(r) * out_w + col) * c + k] = png.at(y, x, k);
        }
    png.samples.swap(out);
    png.height = out_h;
    png.width = out_w;
}

Decoded read_png(const std::string& path, const std::string& what) {
    if (!std::filesystem::is_regular_file(path)) throw MissingFileError("no such image file: " + path);
    std::unique_ptr<FILE, decltype(&std::fclose)> file(std::fopen(path.c_str(), "rb"), std::fclose);
    if (!file) throw SystemError(path + ": " + std::strerror(errno));
    png_byte signature[8] = {};
    const size_t got = std::fread(signature, 1, 8, file.get());
    if (got != 8 || png_sig_cmp(signature, 0, 8) != 0)
        throw InputError(path + " is not a readable image (not a PNG file: the C++ host reads PNG images; "
                                "convert it, or decode it yourself and pass the pixels)");
    std::rewind(file.get());
    auto png = std::make_unique<Decoded>();
    if (!decode(file.get(), png.get())) throw InputError(path + " is not a readable image (" + png->error + ")");
    orient(*png, orientation(*png, what));
    return std::move(*png);
}

uint8_t eight_bit(const Decoded& png, uint16_t value) {
    return png.bit_depth == 16 ? static_cast<uint8_t>(value >> 8) : static_cast<uint8_t>(value);
}

// Pillow's alpha rule (runtime/images.py _with_alpha): colour decides unless the alpha disagrees.
Mask with_alpha(const Mask& by_colour, const std::vector<uint8_t>& alpha, const std::string& what) {
    uint8_t top = 0;
    for (uint8_t a : alpha) top = std::max(top, a);
    bool opaque = top > 0;
    for (uint8_t a : alpha) opaque = opaque && a == top;
    if (opaque) return by_colour;
    for (size_t i = 0; i < alpha.size(); ++i)
        if ((alpha[i] != 0) != (by_colour.values[i] != 0))
            throw InputError(what +
                             ": the mask's alpha channel and its colour mark different pixels, so it is ambiguous; "
                             "pass the one that marks the object: mask.getchannel('A') (PIL) or array[..., 3] for "
                             "the alpha, mask.convert('RGB') or array[..., :3] for the colour");
    return by_colour;
}

}  // namespace

bool Mask::any() const {
    for (uint8_t v : values)
        if (v) return true;
    return false;
}

Image read_image(const std::string& path, const std::string& what) {
    const Decoded png = read_png(path, what);
    Image image(png.height, png.width);
    const bool grey = png.color_type == PNG_COLOR_TYPE_GRAY;
    for (int y = 0; y < png.height; ++y)
        for (int x = 0; x < png.width; ++x) {
            uint8_t* out = &image.pixels[(static_cast<size_t>(y) * png.width + x) * 3];
            if (png.color_type == PNG_COLOR_TYPE_PALETTE) {
                const uint16_t index = png.at(y, x, 0);
                const png_color colour = index < png.palette.size() ? png.palette[index] : png_color{0, 0, 0};
                out[0] = colour.red, out[1] = colour.green, out[2] = colour.blue;
            } else if (grey || png.color_type == PNG_COLOR_TYPE_GRAY_ALPHA) {
                const uint32_t v = png.at(y, x, 0);
                uint8_t level;
                if (grey && png.bit_depth == 16)
                    level = static_cast<uint8_t>((v * 255 + 32767) / 65535);  // Pillow's I;16 -> L
                else if (grey && png.bit_depth < 8)
                    level = static_cast<uint8_t>(v * (255 / ((1 << png.bit_depth) - 1)));
                else
                    level = eight_bit(png, static_cast<uint16_t>(v));
                out[0] = out[1] = out[2] = level;
            } else {
                for (int k = 0; k < 3; ++k) out[k] = eight_bit(png, png.at(y, x, k));
            }
        }
    return image;
}

Mask read_mask(const std::string& path, const std::string& what) {
    const Decoded png = read_png(path, what);
    Mask mask(png.height, png.width);
    std::vector<uint8_t> alpha;
    const bool has_alpha = png.color_type == PNG_COLOR_TYPE_GRAY_ALPHA || png.color_type == PNG_COLOR_TYPE_RGB_ALPHA;
    const int colours = png.color_type == PNG_COLOR_TYPE_RGB || png.color_type == PNG_COLOR_TYPE_RGB_ALPHA ? 3 : 1;
    for (int y = 0; y < png.height; ++y)
        for (int x = 0; x < png.width; ++x) {
            bool on = false;
            for (int k = 0; k < colours; ++k)
                // palette and grey: the stored value; colour: its 8-bit value, as Pillow decodes it
                on = on || (colours == 1 && !has_alpha ? png.at(y, x, k) != 0 : eight_bit(png, png.at(y, x, k)) != 0);
            mask.values[static_cast<size_t>(y) * png.width + x] = on;
            if (has_alpha) alpha.push_back(eight_bit(png, png.at(y, x, png.channels - 1)));
        }
    return has_alpha ? with_alpha(mask, alpha, what) : mask;
}

void check_pair(const Image& image, const Mask& mask, const std::string& what) {
    if (image.height != mask.height || image.width != mask.width)
        throw InputError(what + ": the mask is " + std::to_string(mask.width) + "x" + std::to_string(mask.height) +
                         " but the image is " + std::to_string(image.width) + "x" + std::to_string(image.height) +
                         "; pass a mask of the image's size");
    if (!mask.any()) throw InputError(what + ": the mask is empty; a support needs at least one foreground pixel");
}

Image overlay(const Image& image, const Mask& mask, const std::vector<std::array<uint8_t, 3>>& colours, double alpha) {
    // numpy computes this in float32 with the Python floats (1 - alpha) and alpha cast to float32.
    const float keep = static_cast<float>(1.0 - alpha), tint = static_cast<float>(alpha);
    Image out = image;
    for (size_t i = 0; i < mask.values.size(); ++i) {
        if (!mask.values[i]) continue;
        const auto& colour = colours[mask.values[i] % colours.size()];
        for (int k = 0; k < 3; ++k) {
            const float kept = static_cast<float>(image.pixels[i * 3 + k]) * keep;
            const float added = static_cast<float>(colour[k]) * tint;
            out.pixels[i * 3 + k] = static_cast<uint8_t>(std::nearbyint(kept + added));  // half to even
        }
    }
    return out;
}

namespace {

struct Encoder {
    std::string error;
};

void on_write_error(png_structp png, png_const_charp message) {
    static_cast<Encoder*>(png_get_error_ptr(png))->error = message;
    png_longjmp(png, 1);
}

bool encode(FILE* file, int width, int height, int channels, const uint8_t* pixels, Encoder* state) {
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, state, on_write_error, on_warning);
    if (!png) {
        state->error = "libpng could not start";
        return false;
    }
    png_infop info = png_create_info_struct(png);
    if (!info || setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        return false;
    }
    png_init_io(png, file);
    png_set_IHDR(png, info, static_cast<png_uint_32>(width), static_cast<png_uint_32>(height), 8,
                 channels == 1 ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int y = 0; y < height; ++y)
        png_write_row(png, const_cast<png_bytep>(pixels + static_cast<size_t>(y) * width * channels));
    png_write_end(png, nullptr);
    png_destroy_write_struct(&png, &info);
    return true;
}

void write_pixels(const std::string& path, int width, int height, int channels, const uint8_t* pixels, bool overwrite) {
    replace_file(path, overwrite, [&](const std::string& tmp) {
        std::unique_ptr<FILE, decltype(&std::fclose)> file(std::fopen(tmp.c_str(), "wb"), std::fclose);
        if (!file) throw SystemError(tmp + ": " + std::strerror(errno));
        auto state = std::make_unique<Encoder>();
        if (!encode(file.get(), width, height, channels, pixels, state.get()))
            throw SystemError(path + ": " + (state->error.empty() ? std::strerror(errno) : state->error));
        if (std::fflush(file.get()) != 0 || std::ferror(file.get())) throw SystemError(path + ": " + std::strerror(errno));
    });
}

}  // namespace

void write_png(const std::string& path, const Mask& grey, bool overwrite) {
    write_pixels(path, grey.width, grey.height, 1, grey.values.data(), overwrite);
}

void write_png(const std::string& path, const Image& rgb, bool overwrite) {
    write_pixels(path, rgb.width, rgb.height, 3, rgb.pixels.data(), overwrite);
}

}  // namespace diffseg
