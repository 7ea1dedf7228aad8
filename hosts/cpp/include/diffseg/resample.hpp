// Resizing as Pillow (13, the version pinned in constraints.txt) does it, bit for bit, for the host-side steps of SLiMe's patched inference
// (runtime/patches.py): the image to the output size (bilinear, antialiased when shrinking) and
// the label map back to the image's size (nearest). DiffewS resizes inside its graphs.
#pragma once

#include "diffseg/image.hpp"

namespace diffseg {

// Pillow's Image.resize((width, height), Image.BILINEAR) of an RGB image.
Image resize_bilinear(const Image& image, int height, int width);

// Pillow's Image.resize((width, height), Image.NEAREST) of an 8-bit grey image (labels).
Mask resize_nearest(const Mask& labels, int height, int width);

}  // namespace diffseg
