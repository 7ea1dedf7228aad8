// The manifest reader: what it takes from a well-formed manifest, and how it refuses a bad one.
#include <nlohmann/json.hpp>

#include "diffseg/errors.hpp"
#include "diffseg/manifest.hpp"
#include "test_helpers.hpp"

using diffseg::EngineDirError;
using diffseg::Manifest;
using diffseg::testing::message_of;
using diffseg::testing::TempDir;
using diffseg::testing::write_file;
using nlohmann::json;

namespace {

const std::string kAbcSha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

json tensor(const std::string& name, const std::string& dtype, json shape, json min, json max) {
    return {{"name", name}, {"dtype", dtype}, {"shape", shape}, {"min_shape", min}, {"opt_shape", max},
            {"max_shape", max}};
}

// A DiffewS manifest of one fused layer whose two graph files hold "abc".
json diffews_manifest() {
    json bank_in = {tensor("key_00", "float32", {"shots", 16, 8}, {1, 16, 8}, {3, 16, 8}),
                    tensor("value_00", "float32", {"shots", 16, 8}, {1, 16, 8}, {3, 16, 8})};
    json support_out = {tensor("key_00", "float32", {1, 16, 8}, {1, 16, 8}, {1, 16, 8}),
                        tensor("value_00", "float32", {1, 16, 8}, {1, 16, 8}, {1, 16, 8})};
    json image = tensor("image", "uint8", {"height", "width", 3}, {32, 32, 3}, {512, 512, 3});
    json query_in = {image, tensor("threshold", "float32", json::array(), json::array(), json::array())};
    for (const auto& t : bank_in) query_in.push_back(t);
    return {
        {"schema_version", 2},
        {"kind", "diffews"},
        {"model", {{"source", "test"}, {"hash", "f00d"}}},
        {"resolution", 64},
        {"readout", {{"mode", "relative"}, {"threshold", 0.25}, {"decoder", "mask_head"}}},
        {"max_shots", 3},
        {"layers", {{{"name", "down.attn1"}, {"tokens", 16}, {"channels", 8}}}},
        {"precision", "fp32"},
        {"parts", json::object()},
        {"graphs",
         {{"support_encoder",
           {{"file", "support_encoder.onnx"}, {"sha256", kAbcSha256}, {"reduced_precision", false},
            {"spec", {{"name", "support_encoder"},
                      {"inputs", {image, tensor("mask", "uint8", {"mh", "mw"}, {32, 32}, {512, 512})}},
                      {"outputs", support_out}}}}},
          {"query_segmenter",
           {{"file", "query_segmenter.onnx"}, {"sha256", kAbcSha256},
            {"spec", {{"name", "query_segmenter"},
                      {"inputs", query_in},
                      {"outputs", {tensor("mask", "uint8", {"height", "width"}, {32, 32}, {512, 512})}}}}}}}},
        {"rules",
         {{"sides", {{"min", 32}, {"max", 512}}},
          {"support_mask", {{"same_size_as", "image"}, {"foreground", "value > 0"}, {"min_foreground_pixels", 1}}},
          {"shots", {{"min", 1}, {"max", 3}}},
          {"threshold", {{"min", 0.0}, {"max", 1.0}, {"max_exclusive", true}}},
          {"bank", {{"from", "support_encoder"}, {"to", "query_segmenter"}, {"feeds", {{"key_00", "key_00"}}},
                    {"shot_axis", 0}, {"same_shots_in_every_tensor", true}, {"finite", true}}}}},
    };
}

void write_engines(const TempDir& dir, const json& manifest) {
    write_file(dir.file("manifest.json"), manifest.dump(1));
    write_file(dir.file("support_encoder.onnx"), "abc");
    write_file(dir.file("query_segmenter.onnx"), "abc");
}

}  // namespace

TEST(Manifest, ReadsWhatAHostNeeds) {
    TempDir dir;
    write_engines(dir, diffews_manifest());
    const Manifest m = Manifest::read(dir.str());
    EXPECT_EQ(m.kind, "diffews");
    EXPECT_EQ(m.model_hash, "f00d");
    EXPECT_EQ(m.readout.decoder, "mask_head");
    EXPECT_DOUBLE_EQ(m.readout.threshold, 0.25);
    EXPECT_EQ(m.rules.max_shots, 3);
    EXPECT_EQ(m.rules.max_side, 512);
    EXPECT_EQ(m.rules.threshold_max.text(), "1.0");
    EXPECT_EQ(m.bank_names(), (std::vector<std::string>{"key_00", "value_00"}));
    EXPECT_FALSE(m.graph("support_encoder").reduced_precision);
    EXPECT_TRUE(m.graph("query_segmenter").reduced_precision);  // absent: true but for the support encoder
    const auto& bank = m.graph("query_segmenter").spec.input("key_00");
    EXPECT_EQ(bank.shape, (std::vector<int64_t>{-1, 16, 8}));
    EXPECT_EQ(bank.shape_text(), "(shots, 16, 8)");
    EXPECT_EQ(bank.max_shape[0], 3);
}

TEST(Manifest, ASupportEncoderWithoutThePrecisionFieldStaysFp32) {
    json manifest = diffews_manifest();
    manifest["graphs"]["support_encoder"].erase("reduced_precision");
    TempDir dir;
    write_engines(dir, manifest);
    EXPECT_FALSE(Manifest::read(dir.str()).graph("support_encoder").reduced_precision);
}

TEST(Manifest, RefusesAFolderWithoutOne) {
    TempDir dir;
    EXPECT_EQ(message_of<EngineDirError>([&] { Manifest::read(dir.str()); }),
              dir.str() + " is not an engine directory (no manifest.json); build one with `python -m "
                          "export.build_engine --out DIR`");
}

TEST(Manifest, RefusesBrokenJson) {
    TempDir dir;
    write_engines(dir, diffews_manifest());
    write_file(dir.file("manifest.json"), "{\"kind\": ");
    const std::string message = message_of<EngineDirError>([&] { Manifest::read(dir.str()); });
    EXPECT_EQ(message.rfind(dir.file("manifest.json") + " is not valid JSON (", 0), 0u) << message;
}

TEST(Manifest, RefusesAnotherSchemaVersionSayingWhichWay) {
    json manifest = diffews_manifest();
    manifest["schema_version"] = 3;
    TempDir dir;
    write_engines(dir, manifest);
    EXPECT_EQ(message_of<EngineDirError>([&] { Manifest::read(dir.str()); }),
              dir.file("manifest.json") + " has schema version 3; this runtime reads version 2: upgrade the toolkit");
    manifest["schema_version"] = 1;
    write_engines(dir, manifest);
    EXPECT_NE(message_of<EngineDirError>([&] { Manifest::read(dir.str()); }).find("rebuild it with"), std::string::npos);
}

TEST(Manifest, NamesTheFieldThatIsMissingOrMistyped) {
    const std::vector<std::pair<std::function<void(json&)>, std::string>> cases{
        {[](json& m) { m["rules"].erase("sides"); }, "$.rules: 'sides' is a required property"},
        {[](json& m) { m["rules"]["shots"]["max"] = "five"; }, "$.rules.shots.max: \"five\" is not of type 'integer'"},
        {[](json& m) { m["graphs"].erase("query_segmenter"); }, "$.graphs: 'query_segmenter' is a required property"},
        {[](json& m) { m["graphs"]["query_segmenter"]["file"] = "../x.onnx"; }, "$.graphs.query_segmenter.file"},
        {[](json& m) { m["graphs"]["query_segmenter"]["sha256"] = "ABC"; }, "does not match '^[0-9a-f]{64}$'"},
        {[](json& m) { m["kind"] = "sam"; }, "$.kind: 'sam' is not one of ['diffews', 'slime']"},
        {[](json& m) { m["layers"] = json::array(); }, "$.layers: [] should be non-empty"},
    };
    for (const auto& [change, expected] : cases) {
        json manifest = diffews_manifest();
        change(manifest);
        TempDir dir;
        write_engines(dir, manifest);
        const std::string message = message_of<EngineDirError>([&] { Manifest::read(dir.str()); });
        EXPECT_NE(message.find(expected), std::string::npos) << message;
        EXPECT_NE(message.find("is not a valid engine manifest ("), std::string::npos) << message;
    }
}

TEST(Manifest, ChecksEveryFileAndItsHash) {
    TempDir dir;
    write_engines(dir, diffews_manifest());
    write_file(dir.file("query_segmenter.onnx"), "abd");
    EXPECT_EQ(message_of<EngineDirError>([&] { Manifest::read(dir.str()); }),
              dir.file("query_segmenter.onnx") +
                  " does not match its sha256 in manifest.json: it was modified or truncated after the build; "
                  "rebuild the engines");
    EXPECT_NO_THROW(Manifest::read(dir.str(), /*verify=*/false));  // present, not hashed
    std::filesystem::remove(dir.file("query_segmenter.onnx"));
    EXPECT_EQ(message_of<EngineDirError>([&] { Manifest::read(dir.str(), false); }),
              dir.str() + ": graph 'query_segmenter' file query_segmenter.onnx is missing; rebuild the engines");
}

TEST(Manifest, AnUnknownGraphIsNamed) {
    TempDir dir;
    write_engines(dir, diffews_manifest());
    EXPECT_EQ(message_of<EngineDirError>([&] { Manifest::read(dir.str()).graph("part_segmenter"); }),
              "this engine directory (diffews) has no 'part_segmenter' graph; it has ['query_segmenter', "
              "'support_encoder']");
}

TEST(FileSha256, IsOpenSslsDigest) {
    TempDir dir;
    write_file(dir.file("abc"), "abc");
    EXPECT_EQ(diffseg::file_sha256(dir.file("abc")), kAbcSha256);
}
