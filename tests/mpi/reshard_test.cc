// Checkpoints reshard: a run saved at one (data, expert) parallel layout, with or without
// ZeRO-1, resumes at another (or in one process) with
//   - the optimizer state it saved, exactly: the moments of every parameter (assembled over
//     the writer's shards and over the reader's, which saves them again), f32 or bf16, and the
//     step count;
//   - the same losses and final weights as a run made at the new layout from the start, on
//     generated data and on token shards (whose position is converted to the new world size,
//     or refused with an error that says which sizes can continue it), and for PPO (policy,
//     critic, the adaptive KL coefficient);
//   - weights alone (generate, score, rl.init_checkpoint) as each rank's rows, exactly.
// A problem on one rank (a damaged file only it reads) stops every rank with an error.
// Run under mpirun with 2 and 4 ranks; layouts larger than the job are left out.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"
#include "models/model_spec.h"
#include "models/transformer.h"
#include "parallel/process_grid.h"
#include "rl/rl_loop.h"
#include "tests/mpi/mpi_testing.h"
#include "tests/mpi/train_runs.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/json.h"
#include "trainer/optimizer.h"
#include "trainer/safetensors.h"
#include "trainer/token_shards.h"
#include "trainer/train.h"

namespace sy {
namespace {
namespace fs = std::filesystem;
using testing::mpi_world;
using testing::run_dir;
using testing::RunResult;

constexpr int kGlobalBatch = 4;
constexpr double kLr = 1e-2;
constexpr int kSteps = 4;
// As in train_equivalence_test.cc: two layouts sum in different orders, and AdamW carries a
// near-cancelling gradient's relative error through at full step size, ~1e-4 of the distance a
// weight moves; a misplaced expert shard or a lost moment moves weights by a whole step.
constexpr double kWeightAtol = 1e-3 * kLr * kSteps;

struct Layout {
  int dp = 1, ep = 1, zero = 0;
  int size() const { return dp * ep; }
  std::string name() const { return absl::StrCat(dp, "x", ep, "_z", zero); }
};

switchyard::Experiment config_for(const Layout& l) {
  auto c = testing::equivalence_config(l.size(), l.ep, l.zero, kGlobalBatch, R"pb(
    device: DEVICE_CPU
    model { d_model: 16 dense_ffn_hidden: 24 }
    moe { expert_hidden: 12 }
    optimizer { lr: 1e-2 }
    checkpoint { interval: 2 keep_last: 2 }
  )pb");
  return c;
}

// Runs fn on the first n ranks of the job (the others wait), over a communicator of them.
void on_ranks(int n, const std::function<void(Communicator&)>& fn) {
  Communicator& world = mpi_world();
  auto group = world.split(world.rank() < n ? 0 : 1, world.rank());
  if (world.rank() < n) fn(*group);
  world.barrier();
}

std::string step_dir(const std::string& run, int step) {
  return (fs::path(run) / "checkpoints" / absl::StrCat("step_0000000", step)).string();
}

Json manifest_of(const std::string& dir) {
  std::ifstream in(fs::path(dir) / "manifest.json");
  std::stringstream text;
  text << in.rdbuf();
  auto json = parse_json(text.str());
  SY_CHECK(json.ok()) << dir;
  return *json;
}

bool is_stacked(const std::string& name) { return absl::StrContains(name, ".moe.experts."); }

// A checkpoint's whole optimizer state, whatever layout wrote it: each moment over every
// rank's shard (expert rows placed by the writer's EP index), checking that replicated copies
// are the same bits.
struct GlobalState {
  std::map<std::string, Tensor> moments;
  int64_t optimizer_steps = 0;
};

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() &&
         std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// The same names, each with the same bits. Never returns early: a rank-0 check that
// returned would leave the other ranks waiting at the next barrier.
void expect_same_tensors(const std::map<std::string, Tensor>& got,
                         const std::map<std::string, Tensor>& want) {
  EXPECT_EQ(got.size(), want.size());
  for (const auto& [name, t] : want) {
    auto it = got.find(name);
    if (it == got.end()) {
      ADD_FAILURE() << "no " << name;
      continue;
    }
    EXPECT_TRUE(same_bits(it->second, t)) << name;
  }
}

GlobalState read_state(const std::string& dir) {
  const Json m = manifest_of(dir);
  const int world = static_cast<int>(m.find("world_size")->as_int());
  const int ep = static_cast<int>(m.find("expert_parallel")->as_int());
  GlobalState g;
  g.optimizer_steps = m.find("optimizer_steps")->as_int();
  for (int r = 0; r < world; ++r) {
    auto f = load_safetensors(
        (fs::path(dir) / absl::StrCat("optimizer-rank", r, ".safetensors")).string());
    SY_CHECK(f.ok()) << f.status();
    for (const auto& [name, t] : f->tensors) {
      if (!is_stacked(name) || ep == 1) {
        auto [it, fresh] = g.moments.emplace(name, t);
        if (!fresh) EXPECT_TRUE(same_bits(it->second, t)) << dir << ": replicas of " << name;
        continue;
      }
      Shape all = t.shape();
      all[0] *= ep;
      auto it = g.moments.find(name);
      if (it == g.moments.end()) it = g.moments.emplace(name, Tensor::zeros(all, t.dtype())).first;
      const int64_t first = (r % ep) * t.dim(0);
      it->second.rows(first, first + t.dim(0)).copy_from(t);
    }
  }
  return g;
}

// Loads `src` into the optimizer and model of layout `l` on this group, as a resume does, and
// saves them again into run directory `dst` (in layout l's files).
void load_and_save(const switchyard::Experiment& config, const Layout& l, const std::string& src,
                   const std::string& dst, Communicator& comm) {
  const ModelSpec spec = model_spec_from_config(config);
  auto grid = ProcessGrid::create(comm, l.ep, spec.moe.num_experts);
  ASSERT_TRUE(grid.ok()) << grid.status();
  ParamStore store(Device::cpu());
  Transformer model(spec, store, ModelParallel{.world = &grid->world(), .ep = &grid->ep()});
  store.initialize(config.train().seed());
  AdamW optimizer(
      store, {.moment_dtype = moment_dtype_of(config.optimizer().moment_dtype())},
      {.world = &grid->world(), .ep = &grid->ep(), .edp = &grid->edp(), .zero1 = l.zero == 1});
  const CheckpointLayout layout{
      .world = &grid->world(), .expert_parallel = l.ep, .zero_stage = l.zero};
  auto state = load_checkpoint(src, store, &optimizer, layout);
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_EQ(state->step, 2);
  ASSERT_TRUE(save_checkpoint(dst, *state, store, optimizer, 1, layout).ok());
}

// Every layout of this job that a checkpoint can move to, ZeRO-1 on and off.
std::vector<Layout> layouts_of_job() {
  std::vector<Layout> all;
  for (auto [dp, ep] :
       std::vector<std::pair<int, int>>{{1, 1}, {2, 1}, {1, 2}, {2, 2}, {4, 1}, {1, 4}}) {
    if (dp * ep > mpi_world().size()) continue;
    for (int zero : {0, 1}) {
      if (zero == 1 && dp * ep == 1) continue;  // ZeRO-1 over one rank is plain AdamW
      all.push_back({dp, ep, zero});
    }
  }
  return all;
}

TEST(Reshard, EverySavedLayoutResumesAtEveryOtherWithTheSameStateAndLosses) {
  Communicator& world = mpi_world();
  // Saved layouts: (2, 1) and (1, 2) in a 2-rank job, (2, 2) in a 4-rank one.
  std::vector<Layout> saved;
  for (const Layout& l : layouts_of_job()) {
    if (world.size() < 4 ? l.size() == 2 : l.dp == 2 && l.ep == 2) saved.push_back(l);
  }
  // The uninterrupted run at each layout: the reference of a resume there.
  std::map<std::string, RunResult> full;
  std::map<std::string, std::string> full_dir;
  for (const Layout& l : layouts_of_job()) {
    full_dir[l.name()] = testing::train_on(l.size(), config_for(l), "full_" + l.name());
    if (world.rank() == 0) full[l.name()] = testing::read_run(full_dir[l.name()], l.ep, kSteps);
  }

  for (const Layout& from : saved) {
    const std::string src = step_dir(full_dir[from.name()], 2);
    GlobalState want;
    RunResult want_weights;
    if (world.rank() == 0) {
      want = read_state(src);
      want_weights = testing::read_run(full_dir[from.name()], from.ep, 2);
      EXPECT_EQ(want.optimizer_steps, 2);
    }
    for (const Layout& to : layouts_of_job()) {
      if (to.dp == from.dp && to.ep == from.ep && to.zero == from.zero) continue;
      const std::string what = absl::StrCat("saved at ", from.name(), ", resumed at ", to.name());
      SCOPED_TRACE(what);

      // The state itself: loaded at `to`, saved again there, assembled: the same bits.
      const std::string again = run_dir(absl::StrCat("again_", from.name(), "_", to.name()));
      if (world.rank() == 0) fs::remove_all(again);
      world.barrier();
      on_ranks(to.size(),
               [&](Communicator& c) { load_and_save(config_for(to), to, src, again, c); });
      if (world.rank() == 0) {
        const GlobalState got = read_state(step_dir(again, 2));
        EXPECT_EQ(got.optimizer_steps, want.optimizer_steps);
        expect_same_tensors(got.moments, want.moments);
        expect_same_tensors(testing::read_run(again, to.ep, 2).weights, want_weights.weights);
      }

      // Training on: steps 3 and 4 at `to` match the run made at `to` from the start.
      const std::string resumed = run_dir(absl::StrCat("resumed_", from.name(), "_", to.name()));
      if (world.rank() == 0) {
        fs::remove_all(resumed);
        fs::create_directories(fs::path(resumed) / "checkpoints");
        fs::copy(src, fs::path(resumed) / "checkpoints" / "step_00000002",
                 fs::copy_options::recursive);
        std::ofstream(fs::path(resumed) / "checkpoints" / "latest") << "step_00000002\n";
      }
      world.barrier();
      on_ranks(to.size(), [&](Communicator& c) {
        std::ostringstream log;
        absl::Status s = train(config_for(to), {.run_dir = resumed, .resume = true}, log, &c);
        EXPECT_TRUE(s.ok()) << s;
      });
      if (world.rank() == 0) {
        RunResult b = testing::read_run(resumed, to.ep, kSteps), a = full.at(to.name());
        a.losses.erase(a.losses.begin(), a.losses.begin() + 2);  // the resumed run logs 3, 4
        testing::expect_same(b, a, 1e-5, 1e-6, what, kWeightAtol);
      }
      world.barrier();
    }
  }
}

// Weights alone (generate, score, rl.init_checkpoint) load into any layout too: each rank
// gets exactly its experts' rows of a checkpoint written by one process.
TEST(Reshard, WeightsAloneLoadIntoAnyLayoutAsTheirRows) {
  const std::string dir = testing::train_on(1, config_for({1, 1, 0}), "weights_from_one");
  const RunResult whole = testing::read_run(dir, 1, kSteps);  // every rank reads it
  const std::string latest = step_dir(dir, kSteps);
  for (const Layout& to : layouts_of_job()) {
    if (to.ep == 1 || to.zero == 1) continue;
    SCOPED_TRACE(to.name());
    on_ranks(to.size(), [&](Communicator& c) {
      const auto config = config_for(to);
      const ModelSpec spec = model_spec_from_config(config);
      auto grid = ProcessGrid::create(c, to.ep, spec.moe.num_experts);
      ASSERT_TRUE(grid.ok()) << grid.status();
      ParamStore store(Device::cpu());
      Transformer model(spec, store, ModelParallel{.world = &grid->world(), .ep = &grid->ep()});
      auto state = load_checkpoint(latest, store, nullptr,
                                   {.world = &grid->world(), .expert_parallel = to.ep});
      ASSERT_TRUE(state.ok()) << state.status();
      for (const Param* p : store.params()) {
        const Tensor& all = whole.weights.at(p->name);
        const Tensor want = p->group == SyncGroup::kExpert
                                ? all.rows(p->expert_offset, p->expert_offset + p->value.dim(0))
                                : all;
        EXPECT_TRUE(same_bits(p->value, want.clone())) << p->name << " on rank " << c.rank();
      }
    });
  }
}

// Moments stored in bf16 move between layouts as they are: the same bits.
TEST(Reshard, Bf16MomentsReshardBitForBit) {
  auto bf16 = [](const Layout& l) {
    auto c = config_for(l);
    c.mutable_optimizer()->set_moment_dtype(switchyard::OptimizerConfig::MOMENT_BF16);
    return c;
  };
  const Layout from{1, 2, 1};
  const std::string src = step_dir(testing::train_on(2, bf16(from), "bf16_from"), 2);
  for (const Layout& to : {Layout{1, 1, 0}, Layout{2, 1, 1}}) {
    SCOPED_TRACE(to.name());
    const std::string again = run_dir("bf16_again_" + to.name());
    if (mpi_world().rank() == 0) fs::remove_all(again);
    mpi_world().barrier();
    on_ranks(to.size(), [&](Communicator& c) { load_and_save(bf16(to), to, src, again, c); });
    if (mpi_world().rank() == 0) {
      const GlobalState want = read_state(src), got = read_state(step_dir(again, 2));
      for (const auto& [name, t] : want.moments) EXPECT_EQ(t.dtype(), DType::kBF16) << name;
      expect_same_tensors(got.moments, want.moments);
    }
    mpi_world().barrier();
  }
}

// Token shards of byte text below the test vocabulary (64), written once by rank 0.
std::string token_shards() {
  Communicator& world = mpi_world();
  const fs::path dir = run_dir("shards");
  if (world.rank() == 0) {
    fs::remove_all(dir);
    fs::create_directories(dir);
    std::string text;
    uint64_t x = 12345;
    for (int i = 0; i < 3000; ++i) {
      x = x * 6364136223846793005ull + 1442695040888963407ull;
      text.push_back(static_cast<char>(' ' + (x >> 59)));  // 32 .. 63
    }
    std::ofstream(dir / "text.txt") << text;
    SY_CHECK(
        write_text_shards({(dir / "text.txt").string()}, (dir / "out").string(), 400, 20).ok());
  }
  world.barrier();
  return (dir / "out" / "train_*.bin").string();
}

switchyard::Experiment shard_config(const Layout& l, const std::string& shards) {
  auto c = config_for(l);
  c.mutable_data()->set_source(switchyard::DataConfig::DATA_SHARDS);
  c.mutable_data()->set_train_shards(shards);
  return c;
}

// Token shards: rank r of R takes entries r, r + R, ... of each epoch's window order, so a
// checkpoint's per-rank position is converted to the new world size and the global batches
// go on in the same order: the resumed run trains as the one made at the new layout.
TEST(Reshard, TheTokenShardPositionCarriesOverToAnotherWorldSize) {
  Communicator& world = mpi_world();
  const std::string shards = token_shards();
  const Layout from{2, 1, 0};
  const std::string src =
      step_dir(testing::train_on(2, shard_config(from, shards), "shards_from"), 2);
  std::vector<Layout> targets = {{1, 1, 0}};
  if (world.size() >= 4) targets.insert(targets.end(), {{4, 1, 1}, {2, 2, 0}});
  for (const Layout& to : targets) {
    SCOPED_TRACE(to.name());
    const std::string full =
        testing::train_on(to.size(), shard_config(to, shards), "shards_full_" + to.name());
    const std::string resumed = run_dir("shards_resumed_" + to.name());
    if (world.rank() == 0) {
      fs::remove_all(resumed);
      fs::create_directories(fs::path(resumed) / "checkpoints");
      fs::copy(src, fs::path(resumed) / "checkpoints" / "step_00000002",
               fs::copy_options::recursive);
      std::ofstream(fs::path(resumed) / "checkpoints" / "latest") << "step_00000002\n";
    }
    world.barrier();
    on_ranks(to.size(), [&](Communicator& c) {
      std::ostringstream log;
      absl::Status s =
          train(shard_config(to, shards), {.run_dir = resumed, .resume = true}, log, &c);
      EXPECT_TRUE(s.ok()) << s;
    });
    if (world.rank() == 0) {
      RunResult a = testing::read_run(full, to.ep, kSteps),
                b = testing::read_run(resumed, to.ep, kSteps);
      a.losses.erase(a.losses.begin(), a.losses.begin() + 2);
      testing::expect_same(b, a, 1e-5, 1e-6, "token shards, resumed at " + to.name(), kWeightAtol);
    }
    world.barrier();
  }
}

// A position that the new world size cannot continue (2 windows taken in all, 4 ranks) is an
// error that says which world sizes can, on every rank.
TEST(Reshard, AShardPositionTheNewWorldCannotSplitIsAClearError) {
  Communicator& world = mpi_world();
  if (world.size() < 4) GTEST_SKIP() << "needs 4 ranks";
  const std::string shards = token_shards();
  auto two = shard_config({2, 1, 0}, shards);
  two.mutable_train()->set_micro_batch(1);
  two.mutable_train()->set_grad_accum(1);
  two.mutable_train()->set_steps(1);
  const std::string dir = testing::train_on(2, two, "shards_uneven");
  on_ranks(4, [&](Communicator& c) {
    auto four = shard_config({4, 1, 0}, shards);
    four.mutable_train()->set_micro_batch(1);
    four.mutable_train()->set_grad_accum(1);
    std::ostringstream log;
    absl::Status s = train(four, {.run_dir = dir, .resume = true}, log, &c);
    EXPECT_FALSE(s.ok());
    EXPECT_TRUE(absl::StrContains(s.message(), "1 windows on each of 2 ranks")) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), "resume on a number of ranks that divides 2")) << s;
  });
}

// PPO (policy, critic, both optimizers, the adaptive KL coefficient) saved at (2, 1) resumes at
// (1, 2) with ZeRO-1 and goes on as the run made there from the start.
TEST(Reshard, AnRlRunResumesAtAnotherLayout) {
  Communicator& world = mpi_world();
  if (world.size() < 2) GTEST_SKIP() << "needs two ranks";
  const std::string init = testing::train_on(1, config_for({1, 1, 0}), "rl_init");
  auto ppo = [&](const Layout& l, int steps) {
    auto c = config_for(l);
    SY_CHECK(google::protobuf::TextFormat::MergeFromString(R"pb(
                                                             rl {
                                                               algorithm: RL_PPO
                                                               prompts_per_step: 2
                                                               group_size: 2
                                                               epochs: 2
                                                               minibatches: 2
                                                               lr: 1e-2
                                                               critic_lr: 1e-2
                                                               kl_coef: 0.05
                                                               target_kl: 0.01
                                                               kl_horizon: 100
                                                               kl_in_reward: true
                                                               temperature: 0.8
                                                               max_new_tokens: 3
                                                               eval_interval: 0
                                                               eval_examples: 2
                                                               arithmetic { max_digits: 1 }
                                                             }
                                                             checkpoint { interval: 2 keep_last: 2 }
                                                           )pb",
                                                           &c));
    c.mutable_rl()->set_init_checkpoint(init);
    c.mutable_rl()->set_steps(steps);
    SY_CHECK(validate_experiment(c).ok());
    return c;
  };
  auto run = [&](const switchyard::Experiment& c, const std::string& dir, bool resume) {
    on_ranks(2, [&](Communicator& g) {
      std::ostringstream log;
      absl::Status s = rl::run_rl(c, {.run_dir = dir, .resume = resume}, log, &g);
      EXPECT_TRUE(s.ok()) << s;
    });
  };
  const Layout from{2, 1, 0}, to{1, 2, 1};
  const std::string full = run_dir("rl_full"), resumed = run_dir("rl_resumed");
  if (world.rank() == 0) {
    fs::remove_all(full);
    fs::remove_all(resumed);
  }
  world.barrier();
  run(ppo(to, 4), full, false);
  run(ppo(from, 2), resumed, false);
  run(ppo(to, 4), resumed, true);
  if (world.rank() == 0) {
    auto steps = [](const std::string& dir) {
      std::map<int64_t, std::map<std::string, double>> out;
      std::ifstream in(fs::path(dir) / "metrics.jsonl");
      for (std::string line; std::getline(in, line);) {
        auto j = parse_json(line);
        SY_CHECK(j.ok()) << line;
        if (!j->find("policy_loss")) continue;
        for (const char* key : {"policy_loss", "value_loss", "kl", "kl_coef", "entropy",
                                "reward_mean", "rollout_tokens"})
          out[j->find("step")->as_int()][key] = j->find(key)->as_double();
      }
      return out;
    };
    const auto a = steps(full), b = steps(resumed);
    // Steps 1 and 2 logged by the run at `from`, 3 and 4 by the resumed one, none twice (a
    // run that started afresh would log 1 to 4 again).
    std::ifstream in(fs::path(resumed) / "metrics.jsonl");
    int lines = 0;
    for (std::string line; std::getline(in, line);) lines += absl::StrContains(line, "policy_loss");
    EXPECT_EQ(lines, 4);
    for (int64_t step : {3, 4}) {
      EXPECT_TRUE(a.count(step) && b.count(step)) << "step " << step;
      if (!a.count(step) || !b.count(step)) continue;
      for (const auto& [key, value] : a.at(step))
        EXPECT_NEAR(b.at(step).at(key), value, 1e-6 + 1e-4 * std::fabs(value))
            << key << " of step " << step;
    }
  }
  world.barrier();
}

// Another model is refused with a message naming the tensor, on every rank.
TEST(Reshard, AnotherModelIsRefusedOnEveryRank) {
  const Layout from{1, 2, 1};
  const std::string dir = testing::train_on(2, config_for(from), "refused_source");
  on_ranks(2, [&](Communicator& c) {
    auto config = config_for({2, 1, 0});
    config.mutable_moe()->set_expert_hidden(16);
    std::ostringstream log;
    absl::Status s = train(config, {.run_dir = dir, .resume = true}, log, &c);
    EXPECT_FALSE(s.ok());
    EXPECT_TRUE(absl::StrContains(s.message(), "moe.experts.w13")) << s;
  });
}

// A file that only one rank reads is damaged: that rank names it, and the others, whose own
// part loaded, return an error too instead of training on and waiting for it forever.
TEST(Reshard, ADamagedFileOneRankReadsStopsEveryRank) {
  Communicator& world = mpi_world();
  const Layout l{1, 2, 0};
  const std::string dir = testing::train_on(2, config_for(l), "one_rank_damaged");
  const fs::path shard = fs::path(step_dir(dir, 4)) / "experts-ep1.safetensors";
  if (world.rank() == 0) {
    std::fstream f(shard, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-5, std::ios::end);
    f.put('\x7f');
  }
  world.barrier();
  on_ranks(2, [&](Communicator& c) {
    auto config = config_for(l);
    config.mutable_train()->set_steps(6);
    std::ostringstream log;
    absl::Status s = train(config, {.run_dir = dir, .resume = true}, log, &c);
    EXPECT_FALSE(s.ok());
    if (c.rank() == 1) {
      EXPECT_TRUE(absl::StrContains(s.message(), shard.string())) << s;
      EXPECT_TRUE(absl::StrContains(s.message(), "CRC-32C")) << s;
    } else {
      EXPECT_TRUE(absl::StrContains(s.message(), "rank 1: ")) << s;
    }
  });
}

}  // namespace
}  // namespace sy
