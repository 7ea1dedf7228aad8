// The graph I/O contract's checks (runtime/contract.py) and SLiMe's patch layout (runtime/patches.py),
// with the Python runtime's messages.
#include <charconv>
#include <cmath>
#include <string>

#include "diffseg/errors.hpp"
#include "diffseg/manifest.hpp"

namespace diffseg {
namespace {

// Python's repr of a tuple of ints: (), (5,), (2, 3).
std::string tuple_text(const std::vector<int64_t>& dims) {
    std::string out = "(";
    for (size_t i = 0; i < dims.size(); ++i) out += (i ? ", " : "") + std::to_string(dims[i]);
    return out + (dims.size() == 1 ? ",)" : ")");
}

std::string quoted(const std::string& name) { return "'" + name + "'"; }

}  // namespace

std::string python_list(const std::vector<std::string>& names) {
    std::string out = "[";
    for (size_t i = 0; i < names.size(); ++i) out += (i ? ", '" : "'") + names[i] + "'";
    return out + "]";
}

std::string python_float(double value) {
    if (std::isnan(value)) return "nan";
    if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
    // The shortest digits that round-trip (as Python's repr), then Python's layout: positional for
    // exponents -4..15, scientific otherwise, and always a ".0" on a whole number.
    char buffer[64];
    auto result = std::to_chars(buffer, buffer + sizeof buffer, value, std::chars_format::scientific);
    std::string text(buffer, result.ptr);
    const size_t e = text.find('e');
    const int exponent = std::stoi(text.substr(e + 1));
    std::string sign = text[0] == '-' ? "-" : "";
    std::string digits;
    for (size_t i = sign.size(); i < e; ++i)
        if (text[i] != '.') digits += text[i];
    if (exponent < -4 || exponent >= 16) {
        std::string mantissa = digits.substr(0, 1) + (digits.size() > 1 ? "." + digits.substr(1) : "");
        std::string power = std::to_string(std::abs(exponent));
        if (power.size() < 2) power = "0" + power;
        return sign + mantissa + "e" + (exponent < 0 ? "-" : "+") + power;
    }
    if (exponent < 0) return sign + "0." + std::string(static_cast<size_t>(-exponent - 1), '0') + digits;
    const size_t whole = static_cast<size_t>(exponent) + 1;
    if (digits.size() <= whole) return sign + digits + std::string(whole - digits.size(), '0') + ".0";
    return sign + digits.substr(0, whole) + "." + digits.substr(whole);
}

std::string TensorSpec::shape_text() const {
    std::string out = "(";
    for (size_t i = 0; i < shape.size(); ++i)
        out += (i ? ", " : "") + (shape[i] < 0 ? axis_names[i] : std::to_string(shape[i]));
    return out + ")";
}

void TensorSpec::check(const std::string& got_dtype, const std::vector<int64_t>& dims, const std::string& graph) const {
    if (got_dtype != dtype)
        throw InputError(graph + ": input " + quoted(name) + " must be " + dtype + ", got " + got_dtype);
    if (dims.size() != shape.size())
        throw InputError(graph + ": input " + quoted(name) + " must have shape " + shape_text() + ", got " +
                         tuple_text(dims));
    for (size_t axis = 0; axis < dims.size(); ++axis) {
        if (shape[axis] >= 0 && dims[axis] != shape[axis])
            throw InputError(graph + ": input " + quoted(name) + " axis " + std::to_string(axis) + " must be " +
                             std::to_string(shape[axis]) + ", got shape " + tuple_text(dims) + " (expected " +
                             shape_text() + "); was it made by another model?");
        if (shape[axis] < 0 && (dims[axis] < min_shape[axis] || dims[axis] > max_shape[axis]))
            throw InputError(graph + ": input " + quoted(name) + " axis " + std::to_string(axis) + " (" +
                             axis_names[axis] + ") is " + std::to_string(dims[axis]) +
                             ", outside the built range " + std::to_string(min_shape[axis]) + ".." +
                             std::to_string(max_shape[axis]) + "; rebuild the engines with a larger range");
    }
}

void Rules::check_size(int width, int height, const std::string& what) const {
    const int64_t low = min_side, high = max_side;
    if (!(low <= height && height <= high && low <= width && width <= high))
        throw InputError(what + ": the image is " + std::to_string(width) + "x" + std::to_string(height) +
                         "; these engines take sides from " + std::to_string(low) + " to " + std::to_string(high) +
                         " pixels: resize it, or rebuild the engines with --min-side / --max-side");
}

void Rules::check_shots(size_t images, size_t masks) const {
    if (images != masks)
        throw InputError("got " + std::to_string(images) + " support images but " + std::to_string(masks) +
                         " masks; pass one mask per image");
    const auto low = static_cast<size_t>(min_shots), high = static_cast<size_t>(max_shots);
    if (images < low || images > high)
        throw InputError(std::to_string(images) + " support shots; these engines take " + std::to_string(low) + " to " +
                         std::to_string(high) + " (rebuild with a larger --max-shots)");
}

double Rules::check_threshold(double value) const {
    const double low = threshold_min.value, high = threshold_max.value;
    const bool inside = threshold_max_exclusive ? (low <= value && value < high) : (low <= value && value <= high);
    if (!inside)  // NaN fails both comparisons
        throw InputError("threshold must be in [" + threshold_min.text() + ", " + threshold_max.text() +
                         (threshold_max_exclusive ? ")" : "]") +
                         " (a fraction of the decoded mask's maximum or an absolute level, as the manifest's "
                         "readout.mode says), got " + python_float(value));
    return value;
}

void Patching::check() const {
    if (output_size < 8) throw InputError("output size must be at least 8 pixels, got " + std::to_string(output_size));
    if (per_side < 1) throw InputError("patches per side must be at least 1, got " + std::to_string(per_side));
    if (side() < 8 || side() > output_size)
        throw InputError("patch size must be between 8 and the output size " + std::to_string(output_size) +
                         ", got " + std::to_string(side()));
    if (per_side > 1 && side() == output_size)
        throw InputError(std::to_string(per_side) + " patches per side of the whole image would all be the same crop");
}

std::vector<std::pair<int, int>> Patching::origins() const {
    check();
    std::vector<int> steps{0};
    if (per_side > 1) {
        steps.clear();
        const double stride = static_cast<double>(output_size - side()) / (per_side - 1);
        for (int i = 0; i < per_side; ++i) steps.push_back(static_cast<int>(i * stride));
    }
    std::vector<std::pair<int, int>> out;
    for (int top : steps)
        for (int left : steps) out.emplace_back(top, left);
    return out;
}

}  // namespace diffseg
