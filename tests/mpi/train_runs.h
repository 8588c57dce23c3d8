#pragma once
// Training runs on some ranks of a multi-rank test job, read back for comparison: the losses
// a run logged and the weights of its final checkpoint (experts of every EP rank stacked).
// Used by the equivalence tests on CPUs (train_equivalence_test) and on GPUs
// (nccl_train_equivalence_test).
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"
#include "tests/mpi/mpi_testing.h"
#include "tests/testing/testing.h"
#include "trainer/config.h"
#include "trainer/json.h"
#include "trainer/safetensors.h"
#include "trainer/train.h"

namespace sy::testing {

// The equivalence tests' experiment: a small MoE model with every term on (shared expert,
// sigmoid routing with normalised top-k, all balancing terms, the routing bias, one MTP
// module), 4 steps of 2 micro-batches, `global_batch` sequences per micro-batch split over
// `world` ranks, `ep` expert-parallel ranks and ZeRO stage `zero_stage`. `settings` (text
// format, merged last) gives the widths, the learning rate and the device.
inline switchyard::Experiment equivalence_config(int world, int ep, int zero_stage,
                                                 int global_batch, const std::string& settings) {
  switchyard::Experiment c;
  SY_CHECK(google::protobuf::TextFormat::ParseFromString(
      R"pb(
        model {
          vocab_size: 64
          n_layers: 2
          n_heads: 2
          n_kv_heads: 1
          seq_len: 9
          first_k_dense: 1
          init_std: 0.1
        }
        moe {
          num_experts: 4
          top_k: 2
          num_shared_experts: 1
          normalize_topk: true
          score_function: SCORE_SIGMOID
          aux_loss_coef: 0.01
          seq_aux_loss_coef: 0.01
          z_loss_coef: 0.001
          bias_update_rate: 0.01
        }
        mtp { num_modules: 1 }
        data { arithmetic { min_digits: 1 max_digits: 2 eval_examples: 4 } }
        optimizer { weight_decay: 0.1 grad_clip: 1.0 }
        train { steps: 4 grad_accum: 2 log_interval: 1 eval_interval: 0 cpu_threads: 1 }
        checkpoint { interval: 0 keep_last: 1 }
        logging { jsonl: true }
      )pb",
      &c));
  SY_CHECK(google::protobuf::TextFormat::MergeFromString(settings, &c)) << settings;
  c.mutable_train()->set_micro_batch(global_batch / world);
  c.mutable_parallel()->set_expert_parallel_size(ep);
  c.mutable_parallel()->set_zero_stage(zero_stage);
  SY_CHECK(validate_experiment(c).ok());
  return c;
}

struct RunResult {
  std::vector<double> losses;             // per step
  std::map<std::string, Tensor> weights;  // experts stacked over all EP ranks
};

// The run in `dir`: its logged losses and its checkpoint of step `step`, written with `ep`
// expert-parallel ranks.
inline RunResult read_run(const std::string& dir, int ep, int64_t step) {
  namespace fs = std::filesystem;
  RunResult r;
  std::ifstream in(fs::path(dir) / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    auto j = parse_json(line);
    SY_CHECK(j.ok());
    if (const Json* loss = j->find("loss")) r.losses.push_back(loss->as_double());
  }
  const fs::path ckpt = fs::path(dir) / "checkpoints" / absl::StrFormat("step_%08d", step);
  auto model = load_safetensors((ckpt / "model.safetensors").string());
  SY_CHECK(model.ok()) << model.status();
  r.weights = model->tensors;
  if (ep > 1) {
    std::vector<SafetensorsFile> shards;
    for (int i = 0; i < ep; ++i) {
      auto f = load_safetensors((ckpt / absl::StrCat("experts-ep", i, ".safetensors")).string());
      SY_CHECK(f.ok()) << f.status();
      shards.push_back(std::move(*f));
    }
    for (const auto& [name, t0] : shards[0].tensors) {
      Shape shape = t0.shape();
      shape[0] *= ep;
      Tensor all = Tensor::empty(shape);
      for (int i = 0; i < ep; ++i)
        all.rows(i * t0.dim(0), (i + 1) * t0.dim(0)).copy_from(shards[i].tensors.at(name));
      r.weights[name] = all;
    }
  }
  return r;
}

// A run directory of this job. Per job size: ctest may run the 2- and 4-rank jobs of a test
// at the same time.
inline std::string run_dir(const std::string& name) {
  return (std::filesystem::path(::testing::TempDir()) /
          absl::StrCat("switchyard_equivalence_np", mpi_world().size(), "_", name))
      .string();
}

// Trains `config` on the first `world_size` ranks of the job (the others wait) in a fresh
// run_dir(name), which it returns; rank 0's console log goes to `log` when given.
inline std::string train_on(int world_size, const switchyard::Experiment& config,
                            const std::string& name, std::string* log = nullptr) {
  Communicator& world = mpi_world();
  const bool member = world.rank() < world_size;
  auto group = world.split(member ? 0 : 1, world.rank());
  const std::string dir = run_dir(name);
  if (world.rank() == 0) std::filesystem::remove_all(dir);
  world.barrier();
  if (member) {
    std::ostringstream out;
    absl::Status s = train(config, {.run_dir = dir}, out, group.get());
    EXPECT_TRUE(s.ok()) << name << ": " << s;
    if (log) *log = out.str();
  }
  world.barrier();
  return dir;
}

// Losses and weights of `a` within atol + rtol |b| of `b`'s, element by element; the weights
// within weight_atol + rtol |b| where weight_atol is given.
inline void expect_same(const RunResult& a, const RunResult& b, double rtol, double atol,
                        const std::string& what, double weight_atol = -1) {
  if (weight_atol < 0) weight_atol = atol;
  ASSERT_EQ(a.losses.size(), b.losses.size()) << what;
  for (size_t i = 0; i < a.losses.size(); ++i)
    EXPECT_NEAR(a.losses[i], b.losses[i], atol + rtol * std::fabs(b.losses[i]))
        << what << ": loss of step " << i + 1;
  ASSERT_EQ(a.weights.size(), b.weights.size()) << what;
  for (const auto& [name, t] : b.weights) {
    ASSERT_TRUE(a.weights.count(name)) << what << ": " << name;
    EXPECT_TRUE(all_close(a.weights.at(name), t, rtol, weight_atol)) << what << ": " << name;
  }
}

}  // namespace sy::testing
