// `switchyard dump-step`: the file holds the batch the trainer would see, the weights that
// were used, logits and losses the model reproduces from those weights, and gradients that
// agree with finite differences of the dumped loss.
#include "trainer/dump_step.h"

#include <cmath>
#include <filesystem>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"
#include "models/model_spec.h"
#include "models/transformer.h"
#include "tests/testing/testing.h"
#include "trainer/arithmetic.h"
#include "trainer/cli.h"
#include "trainer/config.h"
#include "trainer/safetensors.h"
#include "trainer/train.h"

namespace sy {
namespace {
namespace fs = std::filesystem;

// Every option dump-step must report a term for: two MoE layers plus two MTP modules, sigmoid
// group-limited routing with a bias, a shared expert, capacity dropping, all balancing terms.
constexpr char kConfig[] = R"pb(
  name: "dump_test"
  device: DEVICE_CPU
  model {
    vocab_size: 64
    d_model: 32
    n_layers: 3
    n_heads: 4
    n_kv_heads: 2
    seq_len: 7
    first_k_dense: 1
    dense_ffn_hidden: 48
  }
  moe {
    num_experts: 8
    top_k: 2
    expert_hidden: 24
    num_shared_experts: 1
    score_function: SCORE_SIGMOID
    normalize_topk: true
    route_scale: 2.0
    capacity_factor: 1.5
    aux_loss_coef: 0.01
    seq_aux_loss_coef: 0.005
    z_loss_coef: 0.002
    bias_update_rate: 0.01
    n_groups: 4
    topk_groups: 2
  }
  mtp { num_modules: 2 loss_weight: 0.3 }
  data { arithmetic { min_digits: 1 max_digits: 1 operators: "+-" eval_examples: 8 } }
  train { steps: 2 micro_batch: 6 seed: 77 cpu_threads: 1 }
)pb";

switchyard::Experiment test_config() {
  switchyard::Experiment config;
  SY_CHECK(google::protobuf::TextFormat::ParseFromString(kConfig, &config));
  auto status = validate_experiment(config);
  SY_CHECK(status.ok()) << status;
  return config;
}

// Each call site passes a name of its own, so no two tests share a directory.
std::string fresh_dir(const std::string& name) {
  const fs::path dir = fs::path(::testing::TempDir()) / ("switchyard_dump_step_" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

double meta_number(const SafetensorsFile& file, const std::string& key) {
  auto it = file.metadata.find(key);
  SY_CHECK(it != file.metadata.end()) << "no metadata " << key;
  double value = 0;
  SY_CHECK(absl::SimpleAtod(it->second, &value)) << key << " = " << it->second;
  return value;
}

SafetensorsFile dump(const switchyard::Experiment& config, DumpStepOptions options) {
  std::ostringstream log;
  absl::Status status = dump_step(config, options, log);
  SY_CHECK(status.ok()) << status;
  auto file = load_safetensors(options.out_path);
  SY_CHECK(file.ok()) << file.status();
  return *file;
}

// A model whose weights are the dumped ones.
struct LoadedModel {
  explicit LoadedModel(const switchyard::Experiment& config, const SafetensorsFile& file)
      : spec(model_spec_from_config(config)), model(spec, store) {
    for (Param* p : store.params()) {
      auto it = file.tensors.find("weight." + p->name);
      SY_CHECK(it != file.tensors.end()) << "no weight." << p->name;
      p->value.copy_from(it->second);
    }
    store.values_changed();
  }
  ModelSpec spec;
  ParamStore store;
  Transformer model;
};

TEST(DumpStepTest, BatchIsTheTrainersFirstAndLossesReproduceFromTheDumpedWeights) {
  const switchyard::Experiment config = test_config();
  const std::string out = fresh_dir("init") + "/step.safetensors";
  const SafetensorsFile file = dump(config, {.out_path = out});
  const ModelSpec spec = model_spec_from_config(config);
  const int64_t b = 6, t = spec.seq_len;

  auto task = ArithmeticTask::create({.min_digits = 1, .max_digits = 1, .operators = "+-"}, 77);
  ASSERT_TRUE(task.ok());
  auto batch = task->make_batch(b, t, 0, Split::kTrain);
  ASSERT_TRUE(batch.ok());
  const Tensor& inputs = file.tensors.at("batch.inputs");
  const Tensor& targets = file.tensors.at("batch.targets");
  EXPECT_EQ(inputs.to_i32_vector(), batch->inputs.to_i32_vector());
  EXPECT_EQ(targets.to_i32_vector(), batch->targets.to_i32_vector());
  const std::vector<int32_t> mask = file.tensors.at("batch.mask").to_i32_vector();
  const std::vector<int32_t> tg = targets.to_i32_vector();
  for (size_t i = 0; i < tg.size(); ++i) EXPECT_EQ(mask[i], tg[i] != kIgnoreIndex) << i;
  EXPECT_EQ(file.metadata.at("compute_dtype"), "f32");
  EXPECT_EQ(file.metadata.at("spec.moe.score_function"), "sigmoid");

  LoadedModel loaded(config, file);
  const auto [lm_sum, lm_count] = loaded.model.eval_loss(inputs, targets);
  EXPECT_EQ(lm_count, meta_number(file, "count.lm"));
  EXPECT_NEAR(meta_number(file, "loss.lm"), lm_sum / lm_count, 1e-6);
  const Tensor& logits = file.tensors.at("logits");
  EXPECT_EQ(logits.shape(), (Shape{b * t, spec.vocab_size}));
  std::vector<double> expected;
  for (float v : loaded.model.logits(inputs, false).to_f32_vector()) expected.push_back(v);
  EXPECT_TRUE(testing::all_close(logits, expected, 1e-6, 1e-6));

  // The terms add up, and every switched-on term of every MoE layer is there.
  const double lm = meta_number(file, "loss.lm"), mtp = meta_number(file, "loss.mtp");
  const double balance = meta_number(file, "loss.balance");
  EXPECT_NEAR(meta_number(file, "loss.total"), lm + mtp + balance, 1e-9);
  EXPECT_NEAR(mtp, 0.3 / 2 * (meta_number(file, "loss.mtp.0") + meta_number(file, "loss.mtp.1")),
              1e-6);
  double per_layer = 0;
  for (const char* layer : {"layers.1", "layers.2", "mtp.0.block", "mtp.1.block"}) {
    for (const char* term : {"aux", "seq_aux", "z"}) {
      const double v = meta_number(file, absl::StrCat("loss.", term, "[", layer, "]"));
      EXPECT_GT(v, 0) << term << " of " << layer;
      per_layer += v;
    }
  }
  EXPECT_NEAR(balance, per_layer, 1e-9);
  for (const char* k : {"loss.mtp.0", "loss.mtp.1"}) {
    EXPECT_GT(meta_number(file, k), 1.0) << k << ": a mean CE near log(64)";
  }

  // A gradient for every trainable parameter, shaped like it, finite, not all zero; the
  // routing bias travels as a weight only.
  for (const Param* p : loaded.store.params()) {
    auto grad = file.tensors.find("grad." + p->name);
    if (!p->trainable) {
      EXPECT_EQ(grad, file.tensors.end()) << p->name;
      continue;
    }
    ASSERT_NE(grad, file.tensors.end()) << p->name;
    EXPECT_EQ(grad->second.shape(), p->value.shape()) << p->name;
    double norm = 0;
    for (float v : grad->second.to_f32_vector()) {
      ASSERT_TRUE(std::isfinite(v)) << p->name;
      norm += double(v) * v;
    }
    EXPECT_GT(norm, 0) << p->name;
  }
}

TEST(DumpStepTest, GradientsAgreeWithFiniteDifferencesOfTheDumpedLoss) {
  const switchyard::Experiment config = test_config();
  const SafetensorsFile file = dump(config, {.out_path = fresh_dir("fd") + "/step.safetensors"});
  LoadedModel loaded(config, file);
  const Tensor& inputs = file.tensors.at("batch.inputs");
  const Tensor& targets = file.tensors.at("batch.targets");
  const TargetCounts counts = loaded.model.count_targets(targets);
  LossScales scales{.lm = 1.0 / counts.lm, .balance = 1.0};
  for (int64_t c : counts.mtp) scales.mtp.push_back(0.3 / 2 / c);
  auto loss = [&] { return loaded.model.forward_backward(inputs, targets, scales).total(); };
  EXPECT_NEAR(loss(), meta_number(file, "loss.total"), 1e-6);
  // Weights past the last routing decision of their path, so a nudge moves no token to
  // another expert and the loss is smooth in them.
  std::mt19937_64 rng = testing::rng_for_test();
  for (const char* name : {"final_norm.weight", "mtp.1.out_norm.weight", "lm_head.weight"}) {
    SCOPED_TRACE(name);
    EXPECT_TRUE(testing::grad_check(loss, loaded.store.find(name)->value,
                                    file.tensors.at(absl::StrCat("grad.", name)), rng,
                                    {.eps = 1e-2, .rtol = 2e-2, .atol = 1e-5, .max_elements = 8}));
  }
}

TEST(DumpStepTest, FromACheckpointTakesItsWeightsAndTheNextStepsBatch) {
  switchyard::Experiment config = test_config();
  const std::string run_dir = fresh_dir("run");
  std::ostringstream train_log;
  ASSERT_TRUE(train(config, {.run_dir = run_dir}, train_log).ok()) << train_log.str();
  const SafetensorsFile file = dump(config, {.out_path = fresh_dir("ckpt") + "/step.safetensors",
                                             .checkpoint_dir = run_dir,
                                             .logits_rows = 5});
  EXPECT_EQ(file.metadata.at("step"), "2");
  auto saved = load_safetensors(run_dir + "/checkpoints/step_00000002/model.safetensors");
  ASSERT_TRUE(saved.ok()) << saved.status();
  for (const auto& [name, tensor] : saved->tensors) {
    EXPECT_EQ(file.tensors.at("weight." + name).to_f32_vector(), tensor.to_f32_vector()) << name;
  }
  auto bias = saved->tensors.find("layers.1.moe.router.bias");
  ASSERT_NE(bias, saved->tensors.end());
  double moved = 0;
  for (float v : bias->second.to_f32_vector()) moved += std::fabs(v);
  EXPECT_GT(moved, 0) << "two steps of bias updates";

  auto task = ArithmeticTask::create({.min_digits = 1, .max_digits = 1, .operators = "+-"}, 77);
  auto next = task->make_batch(6, 7, 2 * 6, Split::kTrain);
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(file.tensors.at("batch.inputs").to_i32_vector(), next->inputs.to_i32_vector());
  EXPECT_EQ(file.tensors.at("logits").shape(), (Shape{5, 64}));
}

TEST(DumpStepTest, CommandLineErrorsSayWhatToFix) {
  struct Case {
    std::vector<std::string> args;
    std::string expected;
  };
  const std::string source = SWITCHYARD_SOURCE_DIR;
  for (const Case& c : std::vector<Case>{
           {{"dump-step", "--config", source + "/configs/tiny.textproto"}, "--out"},
           {{"dump-step", "--checkpoint", "/no/such/run", "--out", "x.safetensors"},
            "no config.textproto there"},
           {{"dump-step", "--config", source + "/configs/tiny.textproto", "--out", "x",
             "--logits_rows", "-1"},
            "--logits_rows must be >= 0"},
       }) {
    std::ostringstream out, err;
    EXPECT_EQ(run_cli(c.args, out, err), 1) << c.expected;
    EXPECT_TRUE(absl::StrContains(err.str(), c.expected)) << err.str();
  }
}

}  // namespace
}  // namespace sy
