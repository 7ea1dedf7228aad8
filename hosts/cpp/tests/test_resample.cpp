// Resampling: the properties any correct resize has (tests/test_cpp_host.py compares with Pillow bit for bit).
#include "diffseg/resample.hpp"
#include "test_helpers.hpp"

TEST(ResizeBilinear, KeepsAConstantImageAndTheSameSize) {
    diffseg::Image flat(37, 53);
    std::fill(flat.pixels.begin(), flat.pixels.end(), 200);
    for (auto [h, w] : std::vector<std::pair<int, int>>{{64, 64}, {10, 90}, {37, 20}, {128, 53}}) {
        const auto out = diffseg::resize_bilinear(flat, h, w);
        ASSERT_EQ(out.height, h);
        ASSERT_EQ(out.width, w);
        for (uint8_t v : out.pixels) ASSERT_EQ(v, 200);
    }
    flat.pixels[5] = 3;
    EXPECT_EQ(diffseg::resize_bilinear(flat, 37, 53).pixels, flat.pixels);
}

TEST(ResizeNearest, DoublingRepeatsEveryLabel) {
    diffseg::Mask labels(2, 3);
    labels.values = {1, 2, 3, 4, 5, 6};
    const auto out = diffseg::resize_nearest(labels, 4, 6);
    const std::vector<uint8_t> expected{1, 1, 2, 2, 3, 3, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 4, 4, 5, 5, 6, 6};
    EXPECT_EQ(out.values, expected);
    EXPECT_EQ(diffseg::resize_nearest(out, 2, 3).values, labels.values);
}
