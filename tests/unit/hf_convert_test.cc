// Hugging Face import and export against transformers itself: the fixtures under
// tests/data/hf (made by tests/data/hf/make_fixtures.py with transformers) hold small random
// models of each architecture and the logits transformers computes for fixed tokens. Our
// model, imported, must give those logits; export then import must give the same bytes; every
// broken input must give an error naming what is wrong, and leave no output behind.
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"
#include "models/generate.h"
#include "models/transformer.h"
#include "parallel/local_communicator.h"
#include "rl/rl_loop.h"
#include "tests/testing/testing.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/io/hf_checkpoint.h"
#include "trainer/json.h"
#include "trainer/safetensors.h"

namespace sy {
namespace {
namespace fs = std::filesystem;

#define ASSERT_OK(expr)                   \
  do {                                    \
    const absl::Status status_ = (expr);  \
    ASSERT_TRUE(status_.ok()) << status_; \
  } while (0)

std::string fixture(const std::string& name) {
  return std::string(SWITCHYARD_SOURCE_DIR) + "/tests/data/hf/" + name;
}

// The model of an imported run directory, loaded as `generate` loads it.
struct Loaded {
  switchyard::Experiment config;
  ModelSpec spec;
  std::unique_ptr<ParamStore> store;
  std::unique_ptr<Transformer> model;
};

Loaded load_run(const std::string& run_dir) {
  Loaded l;
  auto config = load_experiment(run_dir + "/config.textproto", {});
  EXPECT_TRUE(config.ok()) << config.status();
  l.config = *config;
  l.spec = model_spec_from_config(l.config);
  l.store = std::make_unique<ParamStore>();
  l.model = std::make_unique<Transformer>(l.spec, *l.store);
  auto dir = latest_checkpoint(run_dir);
  EXPECT_TRUE(dir.ok()) << dir.status();
  auto state = load_checkpoint(*dir, *l.store, nullptr, {.expert_parallel = 1});
  EXPECT_TRUE(state.ok()) << state.status();
  return l;
}

absl::Status import(const std::string& from, const std::string& to) {
  std::ostringstream log;
  return import_hf_checkpoint(from, to, log);
}

absl::Status export_run(const std::string& from, const std::string& to, DType dtype,
                        int64_t shard = 5'000'000'000) {
  std::ostringstream log;
  return export_hf_checkpoint(from, to, {.dtype = dtype, .max_shard_bytes = shard}, log);
}

// Every tensor of an HF directory by name, as stored (bytes and dtype name).
std::map<std::string, std::pair<std::string, std::string>> hf_tensor_bytes(const std::string& dir) {
  std::map<std::string, std::pair<std::string, std::string>> out;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (!name.starts_with("model") || !name.ends_with(".safetensors")) continue;
    auto reader = SafetensorsReader::open(entry.path().string());
    EXPECT_TRUE(reader.ok()) << reader.status();
    for (const std::string& t : reader->names()) {
      auto tensor = reader->read(t);
      EXPECT_TRUE(tensor.ok());
      out[t] = {std::string(static_cast<const char*>(tensor->raw()), tensor->nbytes()),
                reader->stored_dtype(t)};
    }
  }
  return out;
}

class Architectures : public ::testing::TestWithParam<const char*> {};

TEST_P(Architectures, ImportedLogitsMatchTransformers) {
  const std::string dir = testing::fresh_test_dir("hf_convert");
  const std::string run = dir + "/run";
  ASSERT_OK(import(fixture(GetParam()), run));
  Loaded l = load_run(run);
  auto ref = load_safetensors(fixture(GetParam()) + "/reference.safetensors");
  ASSERT_TRUE(ref.ok()) << ref.status();
  const Tensor ids = ref->tensors.at("input_ids");
  const Tensor want = ref->tensors.at("logits");
  const Tensor got = l.model->logits(ids, false);
  ASSERT_EQ(got.shape(), want.shape());
  EXPECT_TRUE(testing::all_close(got, want, 1e-4, 1e-4)) << GetParam();
  // The companion files travel verbatim, and the run is what generate / rl take.
  for (const char* f : {"tokenizer_config.json", "generation_config.json"}) {
    EXPECT_EQ(testing::read_bytes(run + "/" + f),
              testing::read_bytes(fixture(GetParam()) + "/" + f));
  }
  EXPECT_TRUE(fs::exists(run + "/checkpoints/step_00000000/model.safetensors"));
  EXPECT_FALSE(fs::exists(run + "/checkpoints/step_00000000/optimizer-rank0.safetensors"));
}

// Export writes the Hub layout in the asked dtype: a bf16 (or f32) checkpoint exported in its
// own dtype is the same bytes under the same names, and transformers' config fields are there.
TEST_P(Architectures, ExportGivesBackTheSameTensors) {
  const std::string dir = testing::fresh_test_dir("hf_convert");
  ASSERT_OK(import(fixture(GetParam()), dir + "/run"));
  auto original = hf_tensor_bytes(fixture(GetParam()));
  const std::string dtype = original.begin()->second.second;
  if (dtype == "F16") GTEST_SKIP() << "export writes bf16 or f32";
  ASSERT_OK(
      export_run(dir + "/run", dir + "/hf", dtype == "BF16" ? DType::kBF16 : DType::kF32, 100'000));
  auto exported = hf_tensor_bytes(dir + "/hf");
  ASSERT_EQ(exported.size(), original.size());
  for (const auto& [name, bytes] : original) {
    ASSERT_TRUE(exported.count(name)) << name;
    EXPECT_EQ(exported[name].second, bytes.second) << name;
    EXPECT_TRUE(exported[name].first == bytes.first) << name << " differs";
  }
  // Sharded by the size asked: an index naming every tensor's file.
  auto index = parse_json(testing::read_bytes(dir + "/hf/model.safetensors.index.json"));
  ASSERT_TRUE(index.ok());
  EXPECT_EQ(index->find("weight_map")->as_object().size(), original.size());
  auto cfg = parse_json(testing::read_bytes(dir + "/hf/config.json"));
  auto src = parse_json(testing::read_bytes(fixture(GetParam()) + "/config.json"));
  ASSERT_TRUE(cfg.ok() && src.ok());
  for (const char* key : {"architectures", "model_type", "vocab_size", "hidden_size",
                          "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                          "head_dim", "tie_word_embeddings", "intermediate_size"}) {
    if (!src->find(key) || src->find(key)->is_null()) continue;
    ASSERT_TRUE(cfg->find(key)) << key;
    EXPECT_EQ(to_json(*cfg->find(key)), to_json(*src->find(key))) << key;
  }
  for (const char* f : {"tokenizer_config.json", "generation_config.json"}) {
    EXPECT_EQ(testing::read_bytes(dir + "/hf/" + f),
              testing::read_bytes(fixture(GetParam()) + "/" + f));
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Architectures,
                         ::testing::Values("mixtral", "qwen3_moe", "qwen3_moe_bf16", "llama",
                                           "qwen3"));

// export -> import: our f32 weights come back bit for bit (f32 export), through a sharded
// checkpoint.
TEST(HfConvert, ExportThenImportIsByteIdentical) {
  const std::string dir = testing::fresh_test_dir("hf_convert");
  ASSERT_OK(import(fixture("qwen3_moe"), dir + "/a"));
  ASSERT_OK(export_run(dir + "/a", dir + "/hf", DType::kF32, 50'000));
  ASSERT_TRUE(fs::exists(dir + "/hf/model.safetensors.index.json"));
  ASSERT_OK(import(dir + "/hf", dir + "/b"));
  auto a = load_safetensors(dir + "/a/checkpoints/step_00000000/model.safetensors");
  auto b = load_safetensors(dir + "/b/checkpoints/step_00000000/model.safetensors");
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ(a->tensors.size(), b->tensors.size());
  for (const auto& [name, t] : a->tensors) {
    ASSERT_TRUE(b->tensors.count(name)) << name;
    const Tensor& u = b->tensors.at(name);
    ASSERT_EQ(t.shape(), u.shape()) << name;
    EXPECT_EQ(0, std::memcmp(t.raw(), u.raw(), t.nbytes())) << name;
  }
}

// `switchyard convert` off a terminal: each phase (read, save; load, write) says what it moved
// in one summary line, then the command's own line; no redrawn progress lines.
TEST(HfConvert, ConvertCommandPrintsASummaryPerPhase) {
  const std::string dir = testing::fresh_test_dir("hf_convert");
  std::ostringstream imported, exported;
  ASSERT_OK(
      run_convert_command({"--input", fixture("mixtral"), "--output", dir + "/run"}, imported));
  const std::string mib = R"([0-9]+\.[0-9] MiB in [0-9.]+s( \([0-9.]+ MiB/s\))?\n)";
  EXPECT_TRUE(std::regex_match(
      imported.str(),
      std::regex(absl::StrCat("read ", fixture("mixtral"), ": ", mib,
                              "save checkpoint step_00000000: ", mib, "imported Mixtral.*\n"))))
      << imported.str();
  ASSERT_OK(run_convert_command({"--input", dir + "/run", "--output", dir + "/hf"}, exported));
  EXPECT_TRUE(std::regex_match(
      exported.str(), std::regex(absl::StrCat("load ", dir, "/run/checkpoints/step_00000000: ", mib,
                                              "write ", dir, "/hf: ", mib, "exported .*\n"))))
      << exported.str();
  // The export writes bf16: half the bytes the fp32 load read.
  std::smatch load, write;
  const std::string text = exported.str();
  ASSERT_TRUE(std::regex_search(text, load, std::regex(R"(step_00000000: ([0-9.]+) MiB)")));
  ASSERT_TRUE(std::regex_search(text, write, std::regex(R"(/hf: ([0-9.]+) MiB)")));
  EXPECT_NEAR(std::stod(write[1]), std::stod(load[1]) / 2, 0.1) << text;
}

// transformers 5 keeps a MoE block's experts fused in memory ("mlp.experts.gate_up_proj"
// [E, 2F, D], gate first, and "mlp.experts.down_proj" [E, D, F], the router "mlp.gate"; names
// and shapes as its state_dict() lists them): a checkpoint saved straight from that state
// dict imports to the same model as the Hub layout.
TEST(HfConvert, FusedExpertLayoutImportsLikeTheHubLayout) {
  const std::string dir = testing::fresh_test_dir("hf_convert");
  auto hub = load_safetensors(fixture("mixtral") + "/model.safetensors");
  ASSERT_TRUE(hub.ok());
  const int64_t experts = 4, f = 48, d = 64;
  std::vector<std::pair<std::string, Tensor>> fused;
  for (const auto& [name, t] : hub->tensors)
    if (name.find("block_sparse_moe") == std::string::npos) fused.emplace_back(name, t);
  for (int l = 0; l < 2; ++l) {
    const std::string moe = absl::StrCat("model.layers.", l, ".block_sparse_moe.");
    Tensor gate_up = Tensor::empty({experts, 2 * f, d}), down = Tensor::empty({experts, d, f});
    for (int e = 0; e < experts; ++e) {
      const std::string ex = absl::StrCat(moe, "experts.", e, ".");
      Tensor slot = gate_up.rows(e, e + 1).view({2 * f, d});
      slot.rows(0, f).copy_from(hub->tensors.at(ex + "w1.weight"));
      slot.rows(f, 2 * f).copy_from(hub->tensors.at(ex + "w3.weight"));
      down.rows(e, e + 1).view({d, f}).copy_from(hub->tensors.at(ex + "w2.weight"));
    }
    const std::string mlp = absl::StrCat("model.layers.", l, ".mlp.");
    fused.emplace_back(mlp + "gate.weight", hub->tensors.at(moe + "gate.weight"));
    fused.emplace_back(mlp + "experts.gate_up_proj", gate_up);
    fused.emplace_back(mlp + "experts.down_proj", down);
  }
  fs::create_directories(dir + "/fused");
  fs::copy_file(fixture("mixtral") + "/config.json", dir + "/fused/config.json");
  ASSERT_OK(save_safetensors(dir + "/fused/model.safetensors", fused, {{"format", "pt"}}));
  ASSERT_OK(import(dir + "/fused", dir + "/run"));
  Loaded l = load_run(dir + "/run");
  auto ref = load_safetensors(fixture("mixtral") + "/reference.safetensors");
  ASSERT_TRUE(ref.ok());
  EXPECT_TRUE(testing::all_close(l.model->logits(ref->tensors.at("input_ids"), false),
                                 ref->tensors.at("logits"), 1e-4, 1e-4));
}

// The experts of one expert-parallel rank alone: load_hf_weights fills [offset, offset + E/P).
TEST(HfConvert, EachExpertParallelRankReadsItsOwnExperts) {
  auto e = experiment_from_hf(fixture("mixtral"));
  ASSERT_TRUE(e.ok()) << e.status();
  ASSERT_TRUE(e.ok()) << e.status();
  const ModelSpec spec = model_spec_from_config(*e);
  ParamStore whole;
  Transformer full(spec, whole);
  ASSERT_OK(load_hf_weights(fixture("mixtral"), whole));
  // A store laid out as rank 1 of 2 would hold it: experts [2, 4) of each layer.
  ParamStore half;
  for (const Param* p : whole.params()) {
    Shape shape = p->value.shape();
    if (p->group == SyncGroup::kExpert) shape[0] /= 2;
    Param& q = half.add(p->name, shape, p->group, Init::kZeros, 0.0f, p->decay);
    if (p->group == SyncGroup::kExpert) q.expert_offset = spec.moe.num_experts / 2;
  }
  ASSERT_OK(load_hf_weights(fixture("mixtral"), half));
  for (const Param* p : half.params()) {
    const Tensor& w = whole.find(p->name)->value;
    const Tensor want = p->group == SyncGroup::kExpert ? w.rows(2, 4) : w;
    EXPECT_TRUE(testing::all_close(p->value, want.clone(), 0, 0)) << p->name;
  }
}

// rl.init_checkpoint may name a Hugging Face directory: the model comes from its config.json,
// the policy's weights from its tensors (transformers' logits), and a GRPO step runs on them.
TEST(HfConvert, RlStartsFromAHuggingFaceDirectory) {
  switchyard::Experiment config;
  ASSERT_TRUE(google::protobuf::TextFormat::ParseFromString(
      absl::StrCat(R"pb(
                     device: DEVICE_CPU
                     optimizer { weight_decay: 0 grad_clip: 0 }
                     train { steps: 1 micro_batch: 1 cpu_threads: 1 seed: 7 }
                     rl { steps: 1 prompts_per_step: 2 group_size: 2 lr: 1e-3 max_new_tokens: 2
                          eval_examples: 2
                          arithmetic { max_digits: 1 }
                          init_checkpoint: ")pb",
                   fixture("qwen3_moe"), "\" }"),
      &config));
  auto resolved = rl::resolve_rl_experiment(config);
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_TRUE(resolved->model().qk_norm());
  EXPECT_EQ(resolved->model().head_dim(), 32);
  LocalCommunicator world;
  auto trainer = rl::RlTrainer::create(*resolved, world);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  ASSERT_OK((*trainer)->load_policy_weights(fixture("qwen3_moe")));
  auto ref = load_safetensors(fixture("qwen3_moe") + "/reference.safetensors");
  ASSERT_TRUE(ref.ok());
  EXPECT_TRUE(testing::all_close((*trainer)->policy().logits(ref->tensors.at("input_ids"), false),
                                 ref->tensors.at("logits"), 1e-4, 1e-4));
  auto metrics = (*trainer)->step(0);
  ASSERT_TRUE(metrics.ok()) << metrics.status();
}

// The rollout engine's prefill and KV-cache decode take the same attention path (qk-norm,
// wide heads): greedy completions of the imported Qwen3 models equal the argmax of full
// forwards over the growing sequence.
TEST(HfConvert, GreedyDecodingWithTheKvCacheEqualsFullForwards) {
  for (const char* name : {"qwen3_moe", "qwen3"}) {
    auto e = experiment_from_hf(fixture(name));
    ASSERT_TRUE(e.ok()) << e.status();
    ParamStore store;
    Transformer model(model_spec_from_config(*e), store);
    ASSERT_OK(load_hf_weights(fixture(name), store));
    const std::vector<std::vector<int32_t>> prompts = {{5, 77, 301, 12}, {250, 3}};
    SamplingOptions options;
    options.temperature = 0.0f;
    options.max_new_tokens = 4;
    auto got = generate(model, prompts, options);
    ASSERT_TRUE(got.ok()) << got.status();
    for (size_t r = 0; r < prompts.size(); ++r) {
      std::vector<int32_t> seq = prompts[r], want;
      for (int i = 0; i < options.max_new_tokens; ++i) {
        const Tensor ids = Tensor::from_i32(seq, {1, static_cast<int64_t>(seq.size())});
        const std::vector<float> logits = model.logits(ids, true).to_f32_vector();
        const int32_t next =
            static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
        want.push_back(next);
        seq.push_back(next);
      }
      EXPECT_EQ((*got)[r], want) << name << " prompt " << r;
    }
  }
}

// --- bad input ---------------------------------------------------------------------------------

// A copy of a fixture to break.
std::string copy_fixture(const std::string& name, const std::string& dir) {
  const std::string to = dir + "/" + name;
  fs::copy(fixture(name), to, fs::copy_options::recursive);
  return to;
}

void edit_config(const std::string& dir, const std::string& key, Json value) {
  auto json = parse_json(testing::read_bytes(dir + "/config.json"));
  ASSERT_TRUE(json.ok());
  json->set(key, std::move(value));
  testing::write_bytes(dir + "/config.json", to_json(*json));
}

// Imports `from` and expects an error holding every one of `needles`, and no output.
void expect_import_error(const std::string& from, const std::string& to,
                         std::vector<std::string> needles) {
  const absl::Status s = import(from, to);
  ASSERT_FALSE(s.ok()) << "import of " << from << " succeeded";
  for (const std::string& n : needles)
    EXPECT_NE(std::string(s.message()).find(n), std::string::npos)
        << "error lacks '" << n << "': " << s.message();
  EXPECT_FALSE(fs::exists(to)) << "a failed import left " << to;
  for (const auto& e : fs::directory_iterator(fs::path(to).parent_path()))
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << e.path();
}

TEST(HfConvertErrors, ConfigFieldsWeCannotServeAreNamed) {
  const std::string dir = testing::fresh_test_dir("hf_convert");
  struct Case {
    const char* key;
    Json value;
    std::vector<std::string> needles;
  };
  Json yarn = Json::Object{};
  yarn.set("rope_type", "yarn");
  yarn.set("factor", 4.0);
  std::vector<Case> cases = {
      {"architectures", Json::Array{Json("GPT2LMHeadModel")}, {"architectures", "GPT2LMHeadModel"}},
      {"hidden_act", "gelu", {"hidden_act", "gelu"}},
      {"attention_bias", true, {"attention_bias"}},
      {"rope_scaling", yarn, {"rope_scaling", "yarn"}},
      {"sliding_window", 4, {"sliding_window", "4"}},
      {"num_key_value_heads", 3, {"num_key_value_heads", "3"}},
      {"vocab_size", "many", {"vocab_size", "\"many\""}},
  };
  int i = 0;
  for (Case& c : cases) {
    const std::string broken = dir + "/case" + std::to_string(i++);
    fs::create_directories(broken);
    const std::string from = copy_fixture("mixtral", broken);
    edit_config(from, c.key, c.value);
    c.needles.push_back("config.json");
    expect_import_error(from, broken + "/out", c.needles);
  }
  // Qwen3-MoE: a dense layer after a MoE layer has no place in our layout.
  const std::string q = dir + "/qwen";
  fs::create_directories(q);
  const std::string from = copy_fixture("qwen3_moe", q);
  edit_config(from, "mlp_only_layers", Json::Array{Json(1)});
  expect_import_error(from, q + "/out", {"mlp_only_layers", "layer 1"});
}

TEST(HfConvertErrors, MissingExtraMisshapenAndTruncatedTensorsAreNamed) {
  const std::string dir = testing::fresh_test_dir("hf_convert");
  auto rewrite = [&](const std::string& name, auto edit) {
    fs::create_directories(dir + "/" + name);
    const std::string from = copy_fixture("llama", dir + "/" + name);
    auto file = load_safetensors(from + "/model.safetensors");
    EXPECT_TRUE(file.ok());
    std::vector<std::pair<std::string, Tensor>> list(file->tensors.begin(), file->tensors.end());
    edit(list);
    EXPECT_TRUE(save_safetensors(from + "/model.safetensors", list, {}).ok());
    return from;
  };
  const std::string missing = rewrite("missing", [](auto& list) {
    std::erase_if(list,
                  [](const auto& kv) { return kv.first == "model.layers.1.mlp.up_proj.weight"; });
  });
  expect_import_error(missing, dir + "/missing/out",
                      {"model.layers.1.mlp.up_proj.weight", "no tensor"});
  const std::string extra = rewrite("extra", [](auto& list) {
    list.emplace_back("model.layers.0.mlp.bias", Tensor::zeros({4}));
  });
  expect_import_error(extra, dir + "/extra/out", {"model.layers.0.mlp.bias", "model.safetensors"});
  const std::string shape = rewrite("shape", [](auto&) {});
  edit_config(shape, "intermediate_size", 80);
  expect_import_error(shape, dir + "/shape/out",
                      {"model.safetensors", "gate_proj.weight", "[96, 64]", "[80, 64]"});
  const std::string ints = rewrite("ints", [](auto& list) {
    for (auto& [n, t] : list)
      if (n == "model.norm.weight") t = Tensor::zeros({64}, DType::kI32);
  });
  expect_import_error(ints, dir + "/ints/out", {"model.norm.weight", "I32"});

  fs::create_directories(dir + "/truncated");
  const std::string cut = copy_fixture("llama", dir + "/truncated");
  fs::resize_file(cut + "/model.safetensors", fs::file_size(cut + "/model.safetensors") - 100);
  expect_import_error(cut, dir + "/truncated/out", {"model.safetensors", "truncated"});

  // A shard the index names but that is gone.
  fs::create_directories(dir + "/shard");
  const std::string sharded = copy_fixture("qwen3_moe", dir + "/shard");
  fs::remove(sharded + "/model-00002-of-00004.safetensors");
  expect_import_error(sharded, dir + "/shard/out", {"model-00002-of-00004.safetensors"});
}

TEST(HfConvertErrors, OutputsAreNeverOverwrittenOrHalfWritten) {
  const std::string dir = testing::fresh_test_dir("hf_convert");
  fs::create_directories(dir + "/taken");
  const absl::Status s = import(fixture("llama"), dir + "/taken");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(std::string(s.message()).find("exists"), std::string::npos) << s.message();
  ASSERT_OK(import(fixture("llama"), dir + "/run"));
  // A model no architecture we write computes: refused with the field, nothing written.
  ASSERT_OK(import(fixture("qwen3_moe"), dir + "/moe"));
  std::string text = testing::read_bytes(dir + "/moe/config.textproto");
  const size_t at = text.find("moe {");
  ASSERT_NE(at, std::string::npos) << text;
  if (const size_t was = text.find("SCORE_SOFTMAX"); was != std::string::npos) {
    text.replace(was, 13, "SCORE_SIGMOID");
  } else {
    text.insert(at + 5, "\n  score_function: SCORE_SIGMOID");
  }
  testing::write_bytes(dir + "/moe/config.textproto", text);
  const absl::Status e = export_run(dir + "/moe", dir + "/moe_hf", DType::kBF16);
  ASSERT_FALSE(e.ok());
  EXPECT_NE(std::string(e.message()).find("moe.score_function"), std::string::npos) << e.message();
  EXPECT_FALSE(fs::exists(dir + "/moe_hf"));
}

}  // namespace
}  // namespace sy
