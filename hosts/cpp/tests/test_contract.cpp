// The contract checks a host makes before it runs a graph, with the Python runtime's messages.
#include <cmath>
#include <limits>

#include "diffseg/errors.hpp"
#include "diffseg/image.hpp"
#include "diffseg/manifest.hpp"
#include "test_helpers.hpp"

using diffseg::InputError;
using diffseg::testing::message_of;

namespace {

diffseg::Rules rules() {
    diffseg::Rules r;
    r.min_side = 32, r.max_side = 512, r.min_shots = 1, r.max_shots = 5;
    r.threshold_min = {0.0, false};
    r.threshold_max = {1.0, false};
    r.threshold_max_exclusive = true;
    return r;
}

diffseg::TensorSpec bank_spec() {
    diffseg::TensorSpec spec;
    spec.name = "key_00";
    spec.dtype = "float32";
    spec.shape = {-1, 256, 32};
    spec.axis_names = {"shots", "", ""};
    spec.min_shape = {1, 256, 32};
    spec.opt_shape = spec.max_shape = {5, 256, 32};
    return spec;
}

}  // namespace

TEST(Rules, SidesOutsideTheBuiltRangeAreRefused) {
    EXPECT_NO_THROW(rules().check_size(32, 512, "query"));
    EXPECT_EQ(message_of<InputError>([] { rules().check_size(600, 40, "query"); }),
              "query: the image is 600x40; these engines take sides from 32 to 512 pixels: resize it, or rebuild the "
              "engines with --min-side / --max-side");
    EXPECT_THROW(rules().check_size(100, 31, "support"), InputError);
}

TEST(Rules, ShotsMustPairAndFitTheEngines) {
    EXPECT_NO_THROW(rules().check_shots(5, 5));
    EXPECT_EQ(message_of<InputError>([] { rules().check_shots(2, 1); }),
              "got 2 support images but 1 masks; pass one mask per image");
    EXPECT_EQ(message_of<InputError>([] { rules().check_shots(6, 6); }),
              "6 support shots; these engines take 1 to 5 (rebuild with a larger --max-shots)");
    EXPECT_THROW(rules().check_shots(0, 0), InputError);
}

TEST(Rules, ThresholdsOutsideTheRangeAndNanAreRefused) {
    EXPECT_DOUBLE_EQ(rules().check_threshold(0.0), 0.0);
    EXPECT_DOUBLE_EQ(rules().check_threshold(0.999), 0.999);
    const std::string tail = " (a fraction of the decoded mask's maximum or an absolute level, as the manifest's "
                             "readout.mode says), got ";
    EXPECT_EQ(message_of<InputError>([] { rules().check_threshold(1.0); }), "threshold must be in [0.0, 1.0)" + tail + "1.0");
    EXPECT_EQ(message_of<InputError>([] { rules().check_threshold(-0.1); }), "threshold must be in [0.0, 1.0)" + tail + "-0.1");
    EXPECT_EQ(message_of<InputError>([] { rules().check_threshold(std::nan("")); }),
              "threshold must be in [0.0, 1.0)" + tail + "nan");
    auto inclusive = rules();
    inclusive.threshold_max_exclusive = false;
    inclusive.threshold_max = {1.0, true};  // written as the integer 1
    EXPECT_DOUBLE_EQ(inclusive.check_threshold(1.0), 1.0);
    EXPECT_EQ(message_of<InputError>([&] { inclusive.check_threshold(2.0); }), "threshold must be in [0.0, 1]" + tail + "2.0");
}

TEST(TensorSpec, ChecksTypeRankFixedAndDynamicAxes) {
    const auto spec = bank_spec();
    EXPECT_NO_THROW(spec.check("float32", {3, 256, 32}, "support bank"));
    EXPECT_EQ(message_of<InputError>([&] { spec.check("float64", {3, 256, 32}, "support bank"); }),
              "support bank: input 'key_00' must be float32, got float64");
    EXPECT_EQ(message_of<InputError>([&] { spec.check("float32", {256, 32}, "support bank"); }),
              "support bank: input 'key_00' must have shape (shots, 256, 32), got (256, 32)");
    EXPECT_EQ(message_of<InputError>([&] { spec.check("float32", {7}, "g"); }),
              "g: input 'key_00' must have shape (shots, 256, 32), got (7,)");
    EXPECT_EQ(message_of<InputError>([&] { spec.check("float32", {2, 256, 64}, "support bank"); }),
              "support bank: input 'key_00' axis 2 must be 32, got shape (2, 256, 64) (expected (shots, 256, 32)); was "
              "it made by another model?");
    EXPECT_EQ(message_of<InputError>([&] { spec.check("float32", {6, 256, 32}, "support bank"); }),
              "support bank: input 'key_00' axis 0 (shots) is 6, outside the built range 1..5; rebuild the engines "
              "with a larger range");
}

TEST(PythonFloat, WritesNumbersAsPythonsRepr) {
    using diffseg::python_float;
    EXPECT_EQ(python_float(1.0), "1.0");
    EXPECT_EQ(python_float(0.25), "0.25");
    EXPECT_EQ(python_float(-2.5), "-2.5");
    EXPECT_EQ(python_float(0.1 + 0.2), "0.30000000000000004");
    EXPECT_EQ(python_float(1e-05), "1e-05");
    EXPECT_EQ(python_float(0.0001), "0.0001");
    EXPECT_EQ(python_float(100000.0), "100000.0");
    EXPECT_EQ(python_float(1e16), "1e+16");
    EXPECT_EQ(python_float(123456789012345.0), "123456789012345.0");
    EXPECT_EQ(python_float(1.5e300), "1.5e+300");
    EXPECT_EQ(python_float(std::numeric_limits<double>::infinity()), "inf");
}

TEST(Patching, OriginsAndRefusals) {
    diffseg::Patching whole{64, 1, 0};
    EXPECT_EQ(whole.origins(), (std::vector<std::pair<int, int>>{{0, 0}}));
    diffseg::Patching two{64, 2, 48};
    EXPECT_EQ(two.origins(), (std::vector<std::pair<int, int>>{{0, 0}, {0, 16}, {16, 0}, {16, 16}}));
    diffseg::Patching three{512, 3, 400};  // stride 56
    EXPECT_EQ(three.origins()[8], (std::pair<int, int>{112, 112}));
    EXPECT_EQ(message_of<InputError>([] { diffseg::Patching{64, 2, 0}.check(); }),
              "2 patches per side of the whole image would all be the same crop");
    EXPECT_EQ(message_of<InputError>([] { diffseg::Patching{64, 1, 100}.check(); }),
              "patch size must be between 8 and the output size 64, got 100");
    EXPECT_EQ(message_of<InputError>([] { diffseg::Patching{64, 0, 32}.check(); }),
              "patches per side must be at least 1, got 0");
}

TEST(CheckPair, AMaskMustFitItsImageAndMarkSomething) {
    diffseg::Image image(40, 30);
    diffseg::Mask mask(40, 30);
    EXPECT_EQ(message_of<InputError>([&] { diffseg::check_pair(image, mask, "support"); }),
              "support: the mask is empty; a support needs at least one foreground pixel");
    mask.values[7] = 1;
    EXPECT_NO_THROW(diffseg::check_pair(image, mask, "support"));
    EXPECT_EQ(message_of<InputError>([&] { diffseg::check_pair(image, diffseg::Mask(30, 40), "support"); }),
              "support: the mask is 40x30 but the image is 30x40; pass a mask of the image's size");
}
