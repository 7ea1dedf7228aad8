// Bank files: written as np.savez writes them, read back whole, refused when they are not ours.
#include <cstring>

#include "diffseg/bank_file.hpp"
#include "diffseg/errors.hpp"
#include "test_helpers.hpp"

using diffseg::InputError;
using diffseg::testing::message_of;
using diffseg::testing::TempDir;

TEST(BankFile, RoundTripsTensorsAndTags) {
    TempDir dir;
    std::vector<float> key(2 * 3 * 4), value(2 * 3 * 4);
    for (size_t i = 0; i < key.size(); ++i) key[i] = 0.5f * i, value[i] = -1.0f * i;
    diffseg::write_bank_file(dir.file("bank.npz"), {{"key_00", {2, 3, 4}, key.data()}, {"value_00", {2, 3, 4}, value.data()}},
                             "f00d", false, {{"backend", "openvino"}});
    const auto contents = diffseg::read_bank_file(dir.file("bank.npz"), "f00d");
    ASSERT_EQ(contents.arrays.size(), 2u);
    const auto& read = contents.arrays.at("key_00");
    EXPECT_EQ(read.dtype, "float32");
    EXPECT_EQ(read.shape, (std::vector<int64_t>{2, 3, 4}));
    EXPECT_EQ(std::memcmp(read.bytes.data(), key.data(), key.size() * 4), 0);
    EXPECT_EQ(contents.meta.at("backend"), "openvino");
}

TEST(BankFile, NeverOverwritesUnasked) {
    TempDir dir;
    float one = 1.0f;
    diffseg::write_bank_file(dir.file("bank.npz"), {{"key_00", {1}, &one}}, "f00d", false);
    EXPECT_THROW(diffseg::write_bank_file(dir.file("bank.npz"), {{"key_00", {1}, &one}}, "beef", false),
                 diffseg::OutputError);
    EXPECT_NO_THROW(diffseg::read_bank_file(dir.file("bank.npz"), "f00d"));  // untouched
    diffseg::write_bank_file(dir.file("bank.npz"), {{"key_00", {1}, &one}}, "beef", true);
    EXPECT_NO_THROW(diffseg::read_bank_file(dir.file("bank.npz"), "beef"));
    for (const auto& entry : std::filesystem::directory_iterator(dir.str()))  // no temporary file left
        EXPECT_EQ(entry.path().filename(), "bank.npz");
}

TEST(BankFile, RefusesAnotherModelsBankAndOtherFiles) {
    TempDir dir;
    float one = 1.0f;
    diffseg::write_bank_file(dir.file("bank.npz"), {{"key_00", {1}, &one}}, "0123456789abcdef", false);
    EXPECT_EQ(message_of<InputError>([&] { diffseg::read_bank_file(dir.file("bank.npz"), "fedcba9876543210"); }),
              dir.file("bank.npz") +
                  " was computed by another model (hash 0123456789ab, these engines fedcba987654); recompute it with "
                  "set_support");
    diffseg::testing::write_file(dir.file("junk.npz"), "not a zip");
    const std::string message = message_of<InputError>([&] { diffseg::read_bank_file(dir.file("junk.npz"), "f00d"); });
    EXPECT_EQ(message.rfind(dir.file("junk.npz") + " is not a readable support bank (.npz written by save_support): ", 0), 0u)
        << message;
    EXPECT_THROW(diffseg::read_bank_file(dir.file("absent.npz"), "f00d"), diffseg::MissingFileError);
}
