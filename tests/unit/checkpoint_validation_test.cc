// Checkpoints are not trusted blindly: a damaged manifest (negative step, non-numeric seed,
// out-of-range layout), a flipped byte in a tensor file, a NaN weight, or a model that does not
// match the config is a clean error naming the file and the field or tensor, on every path that
// loads one (resume, generate, the shared load_checkpoint); the previous checkpoint still loads;
// a checkpoint written before checksums existed loads as before.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"
#include "models/model_spec.h"
#include "models/transformer.h"
#include "trainer/checkpoint.h"
#include "trainer/commands.h"
#include "trainer/config.h"
#include "trainer/crc32c.h"
#include "trainer/json.h"
#include "trainer/optimizer.h"
#include "trainer/reshard.h"
#include "trainer/safetensors.h"
#include "trainer/train.h"

namespace sy {
namespace {
namespace fs = std::filesystem;

TEST(Crc32c, MatchesThePublishedCheckValues) {
  // The CRC-32C check value and the iSCSI test vectors (RFC 3720, B.4).
  EXPECT_EQ(crc32c("123456789"), 0xE3069283u);
  EXPECT_EQ(crc32c(std::string(32, '\0')), 0x8A9136AAu);
  EXPECT_EQ(crc32c(std::string(32, '\xFF')), 0x62A8AB43u);
  std::string ascending(32, '\0');
  for (int i = 0; i < 32; ++i) ascending[i] = static_cast<char>(i);
  EXPECT_EQ(crc32c(ascending), 0x46DD794Eu);
  // Extending piece by piece, at every split and alignment, gives the CRC of the whole.
  std::string text;
  for (int i = 0; i < 100; ++i) text.push_back(static_cast<char>(i * 37 + 11));
  const uint32_t whole = crc32c(text);
  for (size_t cut = 0; cut <= text.size(); ++cut) {
    EXPECT_EQ(crc32c_extend(crc32c(std::string_view(text).substr(0, cut)), text.data() + cut,
                            text.size() - cut),
              whole)
        << cut;
  }
}

TEST(ShardIndexForWorld, KeepsTheGlobalWindowOrderOrSaysWhichWorldSizesCan) {
  // 3 windows on each of 2 ranks: the first 6 of the epoch's order.
  EXPECT_EQ(*shard_index_for_world(3, 2, 2, "m.json"), 3);
  EXPECT_EQ(*shard_index_for_world(3, 2, 1, "m.json"), 6);
  EXPECT_EQ(*shard_index_for_world(3, 2, 3, "m.json"), 2);
  EXPECT_EQ(*shard_index_for_world(4, 2, 4, "m.json"), 2);
  auto bad = shard_index_for_world(3, 2, 4, "m.json");
  ASSERT_FALSE(bad.ok());
  EXPECT_TRUE(absl::StrContains(bad.status().message(), "m.json")) << bad.status();
  EXPECT_TRUE(absl::StrContains(bad.status().message(), "divides 6")) << bad.status();
}

constexpr char kRun[] = R"pb(
  device: DEVICE_CPU
  model {
    vocab_size: 64
    d_model: 16
    n_layers: 2
    n_heads: 2
    n_kv_heads: 1
    seq_len: 12
    first_k_dense: 1
    dense_ffn_hidden: 24
  }
  moe { num_experts: 4 top_k: 2 expert_hidden: 12 }
  data { arithmetic { min_digits: 1 max_digits: 1 operators: "+" eval_examples: 4 } }
  optimizer { lr: 3e-3 }
  train { steps: 3 micro_batch: 2 cpu_threads: 1 eval_interval: 0 }
  checkpoint { interval: 1 keep_last: 10 }
)pb";

switchyard::Experiment run_config(const std::string& extra = "") {
  switchyard::Experiment config;
  SY_CHECK(google::protobuf::TextFormat::ParseFromString(kRun, &config));
  SY_CHECK(google::protobuf::TextFormat::MergeFromString(extra, &config)) << extra;
  SY_CHECK(validate_experiment(config).ok());
  return config;
}

std::string step_dir(const std::string& run_dir, int step) {
  return (fs::path(run_dir) / "checkpoints" / absl::StrCat("step_0000000", step)).string();
}

// One 3-step run, checkpointed after every step, which each test copies and damages.
class CheckpointValidation : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    source_ = (fs::path(::testing::TempDir()) / "switchyard_checkpoint_validation_source").string();
    fs::remove_all(source_);
    std::ostringstream log;
    absl::Status s = train(run_config(), {.run_dir = source_}, log);
    SY_CHECK(s.ok()) << s;
  }

  void SetUp() override {
    dir_ = (fs::path(::testing::TempDir()) /
            absl::StrCat("switchyard_checkpoint_validation_",
                         ::testing::UnitTest::GetInstance()->current_test_info()->name()))
               .string();
    fs::remove_all(dir_);
    fs::copy(source_, dir_, fs::copy_options::recursive);
  }

  std::string last() const { return step_dir(dir_, 3); }
  std::string manifest() const { return (fs::path(last()) / "manifest.json").string(); }

  void edit_manifest(const std::string& key, Json value) const {
    std::ifstream in(manifest());
    std::stringstream text;
    text << in.rdbuf();
    auto json = parse_json(text.str());
    SY_CHECK(json.ok());
    if (value.is_null()) {
      auto& object = json->as_object();
      std::erase_if(object, [&](const auto& kv) { return kv.first == key; });
    } else {
      json->set(key, std::move(value));
    }
    std::ofstream(manifest(), std::ios::trunc) << to_json(*json) << "\n";
  }

  // Loads `dir` as a resume does (weights, optimizer state) into a fresh model of the config.
  absl::Status load(const std::string& dir, const std::string& extra = "") const {
    const auto config = run_config(extra);
    ParamStore store(Device::cpu());
    Transformer model(model_spec_from_config(config), store);
    AdamW optimizer(store, {});
    return load_checkpoint(dir, store, &optimizer).status();
  }

  absl::Status resume() const {
    std::ostringstream log;
    auto config = run_config();
    config.mutable_train()->set_steps(4);
    return train(config, {.run_dir = dir_, .resume = true}, log);
  }

  // The damage is refused, then the checkpoint before it still resumes.
  void expect_previous_still_resumes() const {
    std::ofstream(fs::path(dir_) / "checkpoints" / "latest", std::ios::trunc) << "step_00000002\n";
    absl::Status s = resume();
    EXPECT_TRUE(s.ok()) << s;
  }

  static std::string source_;
  std::string dir_;
};
std::string CheckpointValidation::source_;

TEST_F(CheckpointValidation, TheUndamagedCheckpointLoadsWithItsChecksumsListed) {
  std::ifstream in(manifest());
  std::stringstream text;
  text << in.rdbuf();
  auto json = parse_json(text.str());
  ASSERT_TRUE(json.ok());
  const Json* files = json->find("files");
  ASSERT_NE(files, nullptr);
  for (const char* name : {"model.safetensors", "optimizer-rank0.safetensors"}) {
    const Json* entry = files->find(name);
    ASSERT_NE(entry, nullptr) << name;
    auto sum = checksum_file((fs::path(last()) / name).string());
    ASSERT_TRUE(sum.ok());
    EXPECT_EQ(entry->find("crc32c")->as_int(), sum->crc32c) << name;
    EXPECT_EQ(entry->find("bytes")->as_int(), static_cast<int64_t>(sum->bytes)) << name;
  }
  EXPECT_TRUE(load(last()).ok());
}

// A save that died leaves step_*.tmp behind (here: a half-written one of a step that never
// finished, and one of a step the resume writes again); the next save clears both and keeps
// the complete checkpoints.
TEST_F(CheckpointValidation, TheNextSaveRemovesLeftoverTmpDirectories) {
  const fs::path ckpt = fs::path(dir_) / "checkpoints";
  for (const char* name : {"step_00000007.tmp", "step_00000004.tmp"}) {
    fs::create_directories(ckpt / name);
    std::ofstream(ckpt / name / "model.safetensors") << "half a file";
  }
  absl::Status s = resume();
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_FALSE(fs::exists(ckpt / "step_00000007.tmp"));
  EXPECT_FALSE(fs::exists(ckpt / "step_00000004.tmp"));
  for (int step : {1, 2, 3, 4}) EXPECT_TRUE(fs::exists(step_dir(dir_, step))) << step;
  EXPECT_TRUE(load(step_dir(dir_, 4)).ok());
}

TEST_F(CheckpointValidation, ANegativeStepIsRefusedNamingTheField) {
  edit_manifest("step", -5);
  for (const absl::Status& s : {load(last()), resume()}) {
    EXPECT_FALSE(s.ok());
    EXPECT_TRUE(absl::StrContains(s.message(), manifest())) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), "'step' is -5")) << s;
  }
  expect_previous_still_resumes();
}

TEST_F(CheckpointValidation, ANonNumericSeedIsRefusedNamingTheField) {
  for (Json seed :
       {Json("12ab"), Json(""), Json("-3"), Json("99999999999999999999999"), Json(int64_t{7})}) {
    edit_manifest("seed", seed);
    absl::Status s = load(last());
    EXPECT_FALSE(s.ok()) << to_json(seed);
    EXPECT_TRUE(absl::StrContains(s.message(), "field 'seed'")) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), manifest())) << s;
    EXPECT_FALSE(absl::StrContains(s.message(), "stoull")) << s;
  }
  expect_previous_still_resumes();
}

TEST_F(CheckpointValidation, OutOfRangeLayoutAndDataFieldsAreRefused) {
  struct Case {
    const char* key;
    Json value;
    const char* says;
  };
  for (const Case& c :
       {Case{"zero_stage", 7, "'zero_stage' is 7"}, Case{"world_size", 0, "'world_size' is 0"},
        Case{"expert_parallel", 3, "'expert_parallel' is 3"},
        Case{"optimizer_steps", -1, "'optimizer_steps' is -1"},
        Case{"version", "1", "'version' is missing or not an integer"},
        Case{"files", "x", "'files' is not an object"}}) {
    SetUp();  // a fresh copy
    edit_manifest(c.key, c.value);
    absl::Status s = load(last());
    EXPECT_FALSE(s.ok()) << c.key;
    EXPECT_TRUE(absl::StrContains(s.message(), c.says)) << s;
  }
  SetUp();
  Json data = Json::Object{};
  data.set("next_index", -4);
  data.set("epoch", 0);
  data.set("index", 0);
  edit_manifest("data", data);
  absl::Status s = load(last());
  EXPECT_TRUE(absl::StrContains(s.message(), "'data.next_index' is -4")) << s;
}

// Flips one bit of a byte in the middle of a file (inside a tensor's data, past the header).
void flip_byte(const std::string& path) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(0, std::ios::end);
  const std::streamoff size = f.tellg();
  f.seekg(size - 9);
  char c = 0;
  f.read(&c, 1);
  c ^= 0x10;
  f.seekp(size - 9);
  f.write(&c, 1);
}

TEST_F(CheckpointValidation, AFlippedByteIsAnErrorNamingTheFile) {
  const std::string model = (fs::path(last()) / "model.safetensors").string();
  flip_byte(model);
  for (const absl::Status& s : {load(last()), resume()}) {
    EXPECT_FALSE(s.ok());
    EXPECT_TRUE(absl::StrContains(s.message(), model)) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), "CRC-32C")) << s;
  }
  std::ostringstream out;
  absl::Status s = run_generate_command({"--checkpoint", dir_, "--prompt", "1+2="}, out);
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(absl::StrContains(s.message(), model)) << s;
  expect_previous_still_resumes();
}

TEST_F(CheckpointValidation, AFlippedByteInTheOptimizerStateStopsAResumeNotAWeightLoad) {
  const std::string moments = (fs::path(last()) / "optimizer-rank0.safetensors").string();
  flip_byte(moments);
  absl::Status s = resume();
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(absl::StrContains(s.message(), moments)) << s;
  // Weights alone (generate, score, rl.init_checkpoint) never read that file.
  const auto config = run_config();
  ParamStore store(Device::cpu());
  Transformer model(model_spec_from_config(config), store);
  EXPECT_TRUE(load_checkpoint(last(), store, nullptr).ok());
}

// Writes a NaN into one element of `tensor` of the checkpoint's model file, and (when the
// manifest keeps checksums) the file's new checksum, as a writer that saved a diverged state
// would have.
void poison(const std::string& dir, const std::string& tensor, float value) {
  const std::string path = (fs::path(dir) / "model.safetensors").string();
  auto file = load_safetensors(path);
  SY_CHECK(file.ok());
  std::vector<std::pair<std::string, Tensor>> tensors(file->tensors.begin(), file->tensors.end());
  for (auto& [name, t] : tensors)
    if (name == tensor) t.data<float>()[t.numel() / 2] = value;
  SY_CHECK(save_safetensors(path, tensors, file->metadata).ok());
  const std::string manifest = (fs::path(dir) / "manifest.json").string();
  std::ifstream in(manifest);
  std::stringstream text;
  text << in.rdbuf();
  auto json = parse_json(text.str());
  SY_CHECK(json.ok());
  if (const Json* listed = json->find("files")) {
    auto sum = checksum_file(path);
    SY_CHECK(sum.ok());
    Json entry = Json::Object{};
    entry.set("bytes", static_cast<int64_t>(sum->bytes));
    entry.set("crc32c", static_cast<int64_t>(sum->crc32c));
    Json files = *listed;
    files.set("model.safetensors", entry);
    json->set("files", files);
  }
  std::ofstream(manifest, std::ios::trunc) << to_json(*json) << "\n";
}

TEST_F(CheckpointValidation, ACheckpointWithoutChecksumsStillLoadsTheSameWeights) {
  edit_manifest("files", Json());  // as written before checksums were kept
  const auto config = run_config();
  ParamStore with(Device::cpu()), without(Device::cpu());
  Transformer a(model_spec_from_config(config), with), b(model_spec_from_config(config), without);
  ASSERT_TRUE(load_checkpoint(step_dir(source_, 3), with, nullptr).ok());
  auto s = load_checkpoint(last(), without, nullptr);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->step, 3);
  for (const Param* p : with.params()) {
    const Param* q = without.find(p->name);
    ASSERT_EQ(p->value.nbytes(), q->value.nbytes());
    EXPECT_EQ(std::memcmp(p->value.raw(), q->value.raw(), p->value.nbytes()), 0) << p->name;
  }
  EXPECT_TRUE(resume().ok());
  // Unchecked bytes, but still checked values: a NaN weight is refused.
  SetUp();
  edit_manifest("files", Json());
  poison(last(), "layers.0.attn.wq", std::nanf(""));
  absl::Status bad = load(last());
  EXPECT_TRUE(absl::StrContains(bad.message(), "'layers.0.attn.wq'")) << bad;
}

TEST_F(CheckpointValidation, ANanOrInfiniteWeightIsRefusedNamingTheTensor) {
  const std::string tensor = "layers.1.moe.experts.w13";
  for (float bad : {std::nanf(""), INFINITY}) {
    SetUp();
    poison(last(), tensor, bad);
    for (const absl::Status& s : {load(last()), resume()}) {
      EXPECT_FALSE(s.ok());
      EXPECT_TRUE(absl::StrContains(s.message(), "'" + tensor + "'")) << s;
      EXPECT_TRUE(absl::StrContains(s.message(), "model.safetensors")) << s;
    }
    std::ostringstream out;
    absl::Status s = run_generate_command({"--checkpoint", dir_, "--prompt", "1+2="}, out);
    EXPECT_FALSE(s.ok());
    EXPECT_TRUE(absl::StrContains(s.message(), "'" + tensor + "'")) << s;
    EXPECT_EQ(out.str(), "");
  }
  expect_previous_still_resumes();
}

TEST_F(CheckpointValidation, AModelUnlikeTheConfigIsRefusedNamingTheTensorAndTheShape) {
  absl::Status s = load(last(), "moe { expert_hidden: 16 }");
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(absl::StrContains(s.message(), "experts.w13' has shape [4, 24, 16]")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "moe.num_experts")) << s;
  s = load(last(), "moe { num_experts: 8 }");
  EXPECT_TRUE(absl::StrContains(s.message(),
                                "router.weight' has shape [4, 16], the config "
                                "expects [8, 16]"))
      << s;
  s = load(last(), "model { dense_ffn_hidden: 32 }");
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(absl::StrContains(s.message(), "the config expects")) << s;
}

// Bounded fuzzing: random edits of a valid manifest (fixed seed) each load or fail with a
// checkpoint error; none crashes, hangs or loads a value out of range.
TEST_F(CheckpointValidation, RandomlyMutatedManifestsLoadOrFailCleanly) {
  std::ifstream in(manifest());
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string valid = buffer.str();
  const std::string alphabet = "0123456789-+.eE\"{}[],: abcnul";
  std::mt19937_64 rng(20);
  int loaded = 0, refused = 0;
  for (int i = 0; i < 1500; ++i) {
    std::string text = valid;
    const int edits = 1 + static_cast<int>(rng() % 3);
    for (int e = 0; e < edits && !text.empty(); ++e) {
      const size_t at = rng() % text.size();
      const char c = alphabet[rng() % alphabet.size()];
      switch (rng() % 4) {
        case 0:
          text[at] = c;
          break;
        case 1:
          text.erase(at, 1);
          break;
        case 2:
          text.insert(at, 1, c);
          break;
        default:
          text.resize(at);
          break;
      }
    }
    std::ofstream(manifest(), std::ios::trunc) << text;
    const auto config = run_config();
    ParamStore store(Device::cpu());
    Transformer model(model_spec_from_config(config), store);
    AdamW optimizer(store, {});
    auto state = load_checkpoint(last(), store, &optimizer);
    if (state.ok()) {
      ++loaded;
      EXPECT_GE(state->step, 0) << text;
      EXPECT_GE(state->data.next_index, 0) << text;
      EXPECT_GE(optimizer.steps_taken(), 0) << text;
    } else {
      ++refused;
      EXPECT_TRUE(absl::StrContains(state.status().message(), "checkpoint ")) << state.status();
    }
  }
  // Both kinds happen: an edit of a digit of the step loads, an edit of a checksum is refused.
  EXPECT_GT(loaded, 0);
  EXPECT_GT(refused, 0);
  std::ofstream(manifest(), std::ios::trunc) << valid;
  EXPECT_TRUE(load(last()).ok());
}

}  // namespace
}  // namespace sy
