#include "trainer/safetensors.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>

#include "gtest/gtest.h"
#include "tests/testing/testing.h"

namespace sy {
namespace {

namespace fs = std::filesystem;

std::string test_dir() { return testing::fresh_test_dir("safetensors_test"); }
using testing::read_bytes;
using testing::write_bytes;

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(v >> (8 * i));
  return s;
}

// A safetensors file as any writer would lay it out: length, header, data.
std::string file_bytes(const std::string& header, const std::string& data) {
  return le64(header.size()) + header + data;
}

std::string f32_bytes(std::initializer_list<float> values) {
  std::string s;
  for (float v : values) s.append(reinterpret_cast<const char*>(&v), 4);
  return s;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

TEST(SafetensorsTest, RoundTripsEveryDtypeZeroSizeTensorsAndMetadata) {
  std::string path = test_dir() + "/model.safetensors";
  auto rng = testing::rng_for_test();
  Tensor f32 = testing::random_normal({2, 3}, rng);
  Tensor bf16 = testing::random_normal({5}, rng).to(DType::kBF16);
  Tensor i32 = testing::random_ints({3, 1}, -100, 100, rng);
  Tensor i64 = Tensor::empty({2}, DType::kI64);
  i64.data<int64_t>()[0] = int64_t{1} << 40;
  i64.data<int64_t>()[1] = -7;
  Tensor empty = Tensor::empty({0, 5});
  Tensor scalar = Tensor::from_f32({3.5f}, {});
  std::vector<std::pair<std::string, Tensor>> tensors = {
      {"layers.0.attn.wq", f32}, {"embed.bf16", bf16}, {"ids", i32},
      {"counts", i64},           {"empty", empty},     {"scalar", scalar}};
  std::map<std::string, std::string> metadata = {{"format", "pt"}, {"step", "120"}};
  ASSERT_TRUE(save_safetensors(path, tensors, metadata).ok());
  EXPECT_EQ(
      std::distance(fs::directory_iterator(fs::path(path).parent_path()), fs::directory_iterator()),
      1);  // no temp file left behind

  absl::StatusOr<SafetensorsFile> file = load_safetensors(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->path, path);
  EXPECT_EQ(file->metadata, metadata);
  ASSERT_EQ(file->tensors.size(), tensors.size());
  for (const auto& [name, expected] : tensors) {
    ASSERT_TRUE(file->tensors.count(name)) << name;
    const Tensor& got = file->tensors.at(name);
    EXPECT_EQ(got.shape(), expected.shape()) << name;
    EXPECT_EQ(got.dtype(), expected.dtype()) << name;
    EXPECT_TRUE(same_bytes(got, expected)) << name;
    EXPECT_TRUE(expect_tensor(*file, name, expected.shape(), expected.dtype()).ok()) << name;
  }

  // No metadata: no "__metadata__" key at all.
  ASSERT_TRUE(save_safetensors(path, {{"x", f32}}, {}).ok());
  EXPECT_EQ(read_bytes(path).find("__metadata__"), std::string::npos);
}

TEST(SafetensorsTest, WritesTheStandardByteLayout) {
  std::string path = test_dir() + "/a.safetensors";
  Tensor x = Tensor::from_i32({1, -2}, {2});
  ASSERT_TRUE(save_safetensors(path, {{"x", x}}, {{"a", "b"}}).ok());
  std::string header =
      R"({"__metadata__":{"a":"b"},"x":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}})";
  header.resize((header.size() + 7) / 8 * 8, ' ');          // padded with spaces to a multiple of 8
  std::string data("\x01\x00\x00\x00\xfe\xff\xff\xff", 8);  // little-endian 1, -2
  EXPECT_EQ(read_bytes(path), file_bytes(header, data));
}

TEST(SafetensorsTest, ReadsAFileBuiltByHandLikeOtherWriters) {
  // As the Python writer lays it out: metadata last, extra whitespace, two tensors, BF16.
  std::string path = test_dir() + "/hand.safetensors";
  std::string header = R"({"b": {"dtype": "BF16", "shape": [2], "data_offsets": [8, 12]}, )"
                       R"("a": {"dtype": "F32", "shape": [1, 2], "data_offsets": [0, 8]}, )"
                       R"("__metadata__": {"format": "pt"}}    )";
  std::string data = f32_bytes({1.0f, -2.5f}) + std::string("\x80\x3f\x00\x40", 4);  // 1, 2
  write_bytes(path, file_bytes(header, data));
  absl::StatusOr<SafetensorsFile> file = load_safetensors(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->metadata.at("format"), "pt");
  EXPECT_TRUE(expect_tensor(*file, "a", {1, 2}, DType::kF32).ok());
  EXPECT_TRUE(expect_tensor(*file, "b", {2}, DType::kBF16).ok());
  EXPECT_EQ(file->tensors.at("a").to_f32_vector(), (std::vector<float>{1.0f, -2.5f}));
  EXPECT_EQ(file->tensors.at("b").to_f32_vector(), (std::vector<float>{1.0f, 2.0f}));
}

struct BrokenFile {
  std::string name;
  std::string bytes;  // empty: no file
  std::string what;
};

// transformers writes F16 checkpoints; Tensor has no f16, so they are read as F32, exactly:
// normal, subnormal, signed zero and infinite halves, one tensor at a time through the reader.
TEST(SafetensorsTest, ReadsF16AsExactF32) {
  const std::string path = test_dir() + "/half.safetensors";
  const uint16_t halves[] = {0x3C00, 0xC000, 0x7BFF, 0x0001, 0x8000, 0x7C00, 0x3555};
  std::string data(reinterpret_cast<const char*>(halves), sizeof(halves));
  data += f32_bytes({7.0f});
  write_bytes(path, file_bytes(R"({"h":{"dtype":"F16","shape":[7],"data_offsets":[0,14]},)"
                               R"("f":{"dtype":"F32","shape":[1],"data_offsets":[14,18]}})",
                               data));
  auto reader = SafetensorsReader::open(path);
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ(reader->stored_dtype("h"), "F16");
  auto h = reader->read("h");
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_EQ(h->dtype(), DType::kF32);
  const std::vector<float> want = {1.0f, -2.0f, 65504.0f, std::ldexp(1.0f, -24), -0.0f,
                                   std::numeric_limits<float>::infinity(), 0.333251953125f};
  const std::vector<float> got = h->to_f32_vector();
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(got[i], want[i]) << i;
  EXPECT_TRUE(std::signbit(got[4]));
  auto f = reader->read("f");
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->to_f32_vector()[0], 7.0f);
}

TEST(SafetensorsTest, EachBrokenFileSaysWhatIsWrong) {
  std::string dir = test_dir();
  const std::string ok_entry = R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const std::string eight = f32_bytes({1, 2});
  std::vector<BrokenFile> cases = {
      {"missing", "", "cannot open"},
      {"tiny", "abcde", "file is 5 bytes, too short for the 8-byte header length"},
      {"header_too_long", le64(1000) + "{}", "header length 1000 is larger than the 2 bytes"},
      {"bad_json", file_bytes("{not json", ""),
       "header is not valid JSON: JSON error at byte 1: expected a string key"},
      {"not_object", file_bytes("[]", ""), "header is not a JSON object"},
      {"no_dtype", file_bytes(R"({"w":{"shape":[2],"data_offsets":[0,8]}})", eight),
       "tensor 'w': header entry has no \"dtype\""},
      {"no_shape", file_bytes(R"({"w":{"dtype":"F32","data_offsets":[0,8]}})", eight),
       "tensor 'w': header entry has no \"shape\""},
      {"no_offsets", file_bytes(R"({"w":{"dtype":"F32","shape":[2]}})", eight),
       "tensor 'w': header entry has no \"data_offsets\""},
      {"unknown_dtype",
       file_bytes(R"({"w":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})", eight),
       "tensor 'w': unsupported dtype \"F64\""},
      {"negative_dim",
       file_bytes(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", eight),
       "non-negative integer"},
      {"reversed_offsets",
       file_bytes(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", eight),
       "is not [begin, end] with 0 <= begin <= end"},
      {"truncated_data", file_bytes("{\"w\":" + ok_entry + "}", eight.substr(0, 5)),
       "tensor 'w': data_offsets [0, 8] run past the 5 bytes of data"},
      {"size_mismatch",
       file_bytes(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", eight),
       "tensor 'w': shape [3] of F32 needs 12 bytes, but data_offsets [0, 8] hold 8"},
      {"overlap",
       file_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                  R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                  eight + "xxxx"),
       "tensors 'a' and 'b' overlap"},
      {"gap",
       file_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                  R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                  eight + "xxxx"),
       "data bytes [4, 8) belong to no tensor"},
      {"trailing", file_bytes("{\"w\":" + ok_entry + "}", eight + "junk"),
       "4 bytes after the last tensor"},
      {"bad_metadata", file_bytes(R"({"__metadata__":{"step":10}})", ""),
       "\"__metadata__\" value for \"step\" is not a string"},
  };
  for (const BrokenFile& c : cases) {
    std::string path = dir + "/" + c.name + ".safetensors";
    if (!c.bytes.empty()) write_bytes(path, c.bytes);
    absl::StatusOr<SafetensorsFile> file = load_safetensors(path);
    ASSERT_FALSE(file.ok()) << c.name;
    std::string message(file.status().message());
    EXPECT_NE(message.find(path), std::string::npos) << message;
    EXPECT_NE(message.find(c.what), std::string::npos) << c.name << ": " << message;
  }
}

TEST(SafetensorsTest, ACutShortCheckpointIsCaught) {
  std::string path = test_dir() + "/cut.safetensors";
  ASSERT_TRUE(save_safetensors(path, {{"w", Tensor::zeros({16})}}, {}).ok());
  fs::resize_file(path, fs::file_size(path) - 3);
  absl::StatusOr<SafetensorsFile> file = load_safetensors(path);
  ASSERT_FALSE(file.ok());
  EXPECT_NE(file.status().message().find("run past the 61 bytes of data"), absl::string_view::npos)
      << file.status();
}

TEST(SafetensorsTest, ExpectTensorSaysWhatDiffersFromTheConfig) {
  std::string path = test_dir() + "/ckpt.safetensors";
  ASSERT_TRUE(save_safetensors(path, {{"layers.0.attn.wq", Tensor::zeros({64, 32})}}, {}).ok());
  absl::StatusOr<SafetensorsFile> file = load_safetensors(path);
  ASSERT_TRUE(file.ok()) << file.status();
  absl::Status shape = expect_tensor(*file, "layers.0.attn.wq", {64, 64}, DType::kF32);
  EXPECT_EQ(shape.message(), "checkpoint " + path +
                                 ": tensor 'layers.0.attn.wq' has shape [64, 32], the config "
                                 "expects [64, 64]");
  absl::Status dtype = expect_tensor(*file, "layers.0.attn.wq", {64, 32}, DType::kBF16);
  EXPECT_EQ(dtype.message(),
            "checkpoint " + path + ": tensor 'layers.0.attn.wq' is f32, the config expects bf16");
  absl::Status missing = expect_tensor(*file, "layers.1.attn.wq", {64, 32}, DType::kF32);
  EXPECT_EQ(missing.message(),
            "checkpoint " + path + ": no tensor 'layers.1.attn.wq', the config needs one");
}

}  // namespace
}  // namespace sy
