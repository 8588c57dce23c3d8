#include "trainer/train.h"

#include <algorithm>
#include <chrono>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/attention.h"
#include "kernels/cpu/threads.h"
#include "kernels/elementwise.h"
#include "kernels/profile.h"
#include "models/generate.h"
#include "models/model_spec.h"
#include "models/transformer.h"
#include "parallel/device_choice.h"
#include "parallel/gradient_sync.h"
#include "parallel/local_communicator.h"
#include "parallel/process_grid.h"
#include "trainer/arithmetic.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/memory_estimate.h"
#include "trainer/optimizer.h"
#include "trainer/progress.h"
#include "trainer/run.h"
#include "trainer/schedule.h"
#include "trainer/tensorboard.h"
#include "trainer/token_shards.h"

namespace sy {
namespace {

TrainStepHook g_after_backward_hook;

// The first of `tensors` holding a NaN or an infinity, by name ("" when all are finite). One
// host wait for all of them: a checkpoint's cost, not a step's. A sum of squares of finite f32
// values stays far below double's range, so only a non-finite element makes it non-finite.
std::string first_non_finite(const std::vector<std::pair<std::string, Tensor>>& tensors) {
  std::vector<std::pair<Device, std::vector<size_t>>> by_device;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = tensors[i].second;
    if (t.numel() == 0) continue;
    auto it = std::find_if(by_device.begin(), by_device.end(),
                           [&](const auto& d) { return d.first == t.device(); });
    if (it == by_device.end()) it = by_device.insert(by_device.end(), {t.device(), {}});
    it->second.push_back(i);
  }
  size_t first = tensors.size();
  for (const auto& [device, indices] : by_device) {
    std::vector<Tensor> xs;
    for (size_t i : indices) {
      const Tensor& t = tensors[i].second;
      if (t.dtype() == DType::kF32) {
        xs.push_back(t);
      } else {  // bf16 moments: widened (exactly) for the f32 reduction
        Tensor wide = Tensor::empty(t.shape(), DType::kF32, t.device());
        cast(wide, t);
        xs.push_back(wide);
      }
    }
    const std::vector<double> squares = sum_squares_each(xs);
    for (size_t k = 0; k < indices.size(); ++k)
      if (!std::isfinite(squares[k])) first = std::min(first, indices[k]);
  }
  return first < tensors.size() ? tensors[first].first : "";
}

// Refuses (on every rank alike: a collective) to checkpoint a state that holds a non-finite
// value, so neither a checkpoint nor `latest` ever names a diverged model.
absl::Status check_state_finite(const ParamStore& store, const AdamW& optimizer,
                                Communicator& world, int64_t step) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const Param* p : store.params()) tensors.emplace_back(p->name, p->value);
  for (auto& named : optimizer.state()) tensors.push_back(std::move(named));
  const std::string bad = first_non_finite(tensors);
  double found = bad.empty() ? 0.0 : 1.0;
  world.all_reduce_host({&found, 1}, ReduceOp::kMax);
  if (found == 0) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "checkpoint at step ", step,
      " not written: ", bad.empty() ? "another rank's state" : absl::StrCat("tensor '", bad, "'"),
      " holds a NaN or an infinity; the previous checkpoint is left as `latest`"));
}

// The training data: the generated arithmetic task or token shards, with a position that a
// checkpoint can save and restore.
class DataFeed {
 public:
  // rank / ranks: this rank's slice of every global micro-batch.
  static absl::StatusOr<DataFeed> create(const switchyard::Experiment& config,
                                         const ModelSpec& spec, int rank, int ranks) {
    DataFeed feed;
    feed.rank_ = rank;
    feed.ranks_ = ranks;
    const auto& data = config.data();
    if (data.source() == switchyard::DataConfig::DATA_ARITHMETIC) {
      ArithmeticOptions options{.min_digits = data.arithmetic().min_digits(),
                                .max_digits = data.arithmetic().max_digits(),
                                .operators = data.arithmetic().operators()};
      auto task = ArithmeticTask::create(options, config.train().seed());
      if (!task.ok()) return task.status();
      if (spec.seq_len < task->min_seq_len()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "model.seq_len: ", spec.seq_len, " is too short for arithmetic with up to ",
            options.max_digits, " digits; set it to at least ", task->min_seq_len()));
      }
      if (spec.vocab_size <= '=') {
        return absl::InvalidArgumentError(
            absl::StrCat("model.vocab_size: ", spec.vocab_size,
                         " cannot hold the byte tokens of arithmetic text; set it to at least 64"));
      }
      feed.task_ = std::move(*task);
      feed.eval_examples_ = data.arithmetic().eval_examples();
    } else {
      ShardLoaderOptions options{.pattern = data.train_shards(),
                                 .seq_len = spec.seq_len,
                                 .vocab_size = spec.vocab_size,
                                 .rank = rank,
                                 .world_size = ranks,
                                 .seed = config.train().seed()};
      auto loader = ShardLoader::open(options);
      if (!loader.ok()) return loader.status();
      feed.train_.emplace(std::move(*loader));
      if (!data.val_shards().empty()) {
        // Every rank evaluates the same windows (evaluation is replicated).
        options.pattern = data.val_shards();
        options.rank = 0;
        options.world_size = 1;
        auto val = ShardLoader::open(options);
        if (!val.ok()) return val.status();
        feed.val_.emplace(std::move(*val));
      }
      feed.eval_examples_ = data.arithmetic().eval_examples();
    }
    return feed;
  }

  absl::StatusOr<TokenBatch> next(int64_t batch, int64_t seq) {
    if (task_) {
      // Problems [next, next + batch * ranks) form the global micro-batch; rank r takes the
      // r-th slice, so any layout of the same global batch sees the same problems.
      auto b = task_->make_batch(batch, seq, next_index_ + rank_ * batch, Split::kTrain);
      next_index_ += batch * ranks_;
      return b;
    }
    return train_->next_batch(batch);
  }

  DataPosition position() const {
    DataPosition p;
    p.next_index = next_index_;
    if (train_) {
      p.epoch = train_->position().epoch;
      p.index = train_->position().index;
    }
    return p;
  }

  absl::Status restore(const DataPosition& p) {
    next_index_ = p.next_index;
    if (train_) return train_->set_position({p.epoch, p.index});
    return absl::OkStatus();
  }

  const ArithmeticTask* task() const { return task_ ? &*task_ : nullptr; }
  ShardLoader* val() { return val_ ? &*val_ : nullptr; }
  int64_t eval_examples() const { return eval_examples_; }

 private:
  std::optional<ArithmeticTask> task_;
  std::optional<ShardLoader> train_, val_;
  int64_t next_index_ = 0;
  int64_t eval_examples_ = 0;
  int rank_ = 0, ranks_ = 1;
};

struct EvalResult {
  double loss = 0;
  double accuracy = -1;  // -1: not defined for this data
  int64_t correct = 0, total = 0;
  double load_max_over_mean = 0;
  bool stopped = false;  // a stop signal ended it early: the numbers are of no use
};

// `progress` counts the examples of the loss pass (the greedy decoding of the arithmetic
// task is one collective call, done after it).
absl::StatusOr<EvalResult> evaluate(Transformer& model, DataFeed& feed, int64_t micro_batch,
                                    Communicator& world, Progress& progress) {
  EvalResult r;
  for (MoeFfn* m : model.moe_layers()) m->stats().reset(model.spec().moe.num_experts);
  double loss_sum = 0;
  int64_t tokens = 0;
  const int64_t n = std::max<int64_t>(1, feed.eval_examples());
  if (const ArithmeticTask* task = feed.task()) {
    progress.set_total(n);
    for (int64_t first = 0; first < n; first += micro_batch) {
      progress.update(first);
      if (stop_agreed(world)) {
        r.stopped = true;
        return r;
      }
      auto batch = task->make_batch(std::min(micro_batch, n - first), model.spec().seq_len, first,
                                    Split::kHeldOut);
      if (!batch.ok()) return batch.status();
      auto [s, c] = model.eval_loss(batch->inputs, batch->targets);
      loss_sum += s;
      tokens += c;
    }
    std::vector<std::string> prompts;
    std::vector<Problem> problems;
    for (int64_t i = 0; i < n; ++i) {
      problems.push_back(task->sample(i, Split::kHeldOut));
      prompts.push_back(problems.back().prompt);
    }
    if (stop_agreed(world)) {
      r.stopped = true;
      return r;
    }
    // Greedy decoding on the KV cache, replicated on every rank (a shared, collective call).
    std::vector<std::vector<int32_t>> ids;
    for (const std::string& p : prompts) ids.push_back(ByteTokenizer::encode(p));
    SamplingOptions greedy{.temperature = 0.0f,
                           .max_new_tokens = static_cast<int>(task->max_problem_tokens()),
                           .stop_tokens = {kEndOfAnswerId}};
    SY_ASSIGN_OR_RETURN(const std::vector<std::vector<int32_t>> completions,
                        generate(model, ids, greedy, &world));
    for (int64_t i = 0; i < n; ++i) {
      std::string text;
      for (int32_t t : completions[i]) text.push_back(t < 256 ? static_cast<char>(t) : '?');
      r.correct += check_answer(problems[i], text);
    }
    r.total = n;
    r.accuracy = static_cast<double>(r.correct) / n;
  } else if (ShardLoader* val = feed.val()) {
    SY_RETURN_IF_ERROR(val->set_position({0, 0}));
    const int64_t windows = std::min<int64_t>(n, val->windows_per_rank());
    progress.set_total(windows);
    for (int64_t done = 0; done < windows; done += micro_batch) {
      progress.update(done);
      if (stop_agreed(world)) {
        r.stopped = true;
        return r;
      }
      SY_ASSIGN_OR_RETURN(TokenBatch batch, val->next_batch(std::min(micro_batch, windows - done)));
      auto [s, c] = model.eval_loss(batch.inputs, batch.targets);
      loss_sum += s;
      tokens += c;
    }
  }
  r.loss = tokens ? loss_sum / tokens : 0;
  for (MoeFfn* m : model.moe_layers()) {
    const auto& load = m->stats().load;
    double total = 0, mx = 0;
    for (double l : load) {
      total += l;
      mx = std::max(mx, l);
    }
    if (total > 0)
      r.load_max_over_mean = std::max(r.load_max_over_mean, mx / (total / load.size()));
  }
  return r;
}

std::string format_rate(double tokens_per_s) {
  if (tokens_per_s >= 1e6) return absl::StrFormat("%.2fM", tokens_per_s / 1e6);
  if (tokens_per_s >= 1e3) return absl::StrFormat("%.1fk", tokens_per_s / 1e3);
  return absl::StrFormat("%.0f", tokens_per_s);
}

}  // namespace

absl::StatusOr<Device> choose_device(const switchyard::Experiment& config, Communicator& world) {
  set_attention_deterministic(config.deterministic());
  switch (config.device()) {
    case switchyard::Experiment::DEVICE_CPU:
      return choose_job_device(DeviceWish::kCpu, world);
    case switchyard::Experiment::DEVICE_CUDA:
      return choose_job_device(DeviceWish::kCuda, world);
    default:
      return choose_job_device(DeviceWish::kAuto, world);
  }
}

absl::StatusOr<DType> choose_precision(const switchyard::Experiment& config, Device device) {
  switch (config.precision()) {
    case switchyard::Experiment::PRECISION_F32:
      return DType::kF32;
    case switchyard::Experiment::PRECISION_BF16:
      if (!device.is_cuda()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "precision: PRECISION_BF16, but this run is on ", device.str(),
            ", whose kernels are f32; set precision: PRECISION_AUTO or PRECISION_F32"));
      }
      return DType::kBF16;
    default:
      return device.is_cuda() ? DType::kBF16 : DType::kF32;
  }
}

void set_after_backward_hook_for_testing(TrainStepHook hook) {
  g_after_backward_hook = std::move(hook);
}

absl::Status train(const switchyard::Experiment& config, const TrainOptions& options,
                   std::ostream& console, Communicator* world_comm) {
  LocalCommunicator local;
  Communicator& host_world = world_comm ? *world_comm : local;
  const bool lead = host_world.rank() == 0;
  RunLog run(options.run_dir, console, lead);
  std::ostream& log = run.log();

  // Ranks started with different configs would compute different things: refuse, before
  // the device choice that every rank must make alike.
  SY_RETURN_IF_ERROR(
      check_same_on_all_ranks(host_world, "the resolved config", resolved_experiment_text(config)));
  SY_ASSIGN_OR_RETURN(const Device device, choose_device(config, host_world));
  const ModelSpec spec = model_spec_from_config(config);
  const auto& tc = config.train();
  cpu::set_cpu_threads(tc.cpu_threads());
  const int64_t steps = tc.steps(), micro = tc.micro_batch(), accum = tc.grad_accum();
  SY_ASSIGN_OR_RETURN(ProcessGrid grid,
                      ProcessGrid::create(host_world, config.parallel().expert_parallel_size(),
                                          spec.has_moe() ? spec.moe.num_experts
                                                         : config.parallel().expert_parallel_size(),
                                          device));
  // Every collective from here on goes through the grid's world, which carries this
  // device's tensors (NCCL between GPUs).
  Communicator& world = grid.world();
  const int zero_stage = config.parallel().zero_stage();

  SY_RETURN_IF_ERROR(agree_on_status(host_world, run.create_dir()));

  SY_ASSIGN_OR_RETURN(const DType compute, choose_precision(config, device));
  // Refuse a model that cannot fit before building it, rather than fail partway through.
  const int64_t ep_size = config.parallel().expert_parallel_size();
  SY_RETURN_IF_ERROR(check_memory_for(
      spec,
      {.compute = compute,
       .moments = moment_dtype_of(config.optimizer().moment_dtype()),
       .expert_parallel = ep_size,
       .optimizer_shards = zero_stage == 1 ? std::max<int64_t>(1, world.size() / ep_size) : 1,
       .micro_batch = micro,
       .seq_len = spec.seq_len},
      device, "training this model"));
  ParamStore store(device, compute);
  Transformer model(spec, store, ModelParallel{.world = &world, .ep = &grid.ep()});
  store.initialize(tc.seed());
  AdamW optimizer(
      store, optimizer_settings(config.optimizer()),
      {.world = &world, .ep = &grid.ep(), .edp = &grid.edp(), .zero1 = zero_stage == 1});
  const std::unique_ptr<GradientSync> grad_sync = make_gradient_sync(store, world, grid.edp());
  Schedule schedule{
      .peak_lr = config.optimizer().lr(),
      .warmup_steps = config.schedule().warmup_steps(),
      .total_steps = steps,
      .decay = config.schedule().decay() == switchyard::ScheduleConfig::DECAY_LINEAR
                   ? Decay::kLinear
               : config.schedule().decay() == switchyard::ScheduleConfig::DECAY_CONSTANT
                   ? Decay::kConstant
                   : Decay::kCosine,
      .min_lr_ratio = config.schedule().min_lr_ratio()};
  SY_ASSIGN_OR_RETURN(DataFeed feed, DataFeed::create(config, spec, world.rank(), world.size()));
  const CheckpointLayout layout{
      .world = &world, .expert_parallel = grid.layout().expert_parallel, .zero_stage = zero_stage};

  // Rank 0 speaks for the job: its console alone shows checkpoint progress.
  std::ostream* const progress = lead ? &log : nullptr;
  int64_t start_step = 0;
  if (options.resume) {
    SY_ASSIGN_OR_RETURN(std::string dir, latest_checkpoint(options.run_dir));
    SY_ASSIGN_OR_RETURN(CheckpointState state,
                        load_checkpoint(dir, store, &optimizer, layout, progress));
    SY_RETURN_IF_ERROR(feed.restore(state.data));
    start_step = state.step;
    log << "resumed from " << dir << " at step " << start_step << "\n";
  }
  SY_RETURN_IF_ERROR(run.write_config(config));
  SY_RETURN_IF_ERROR(run.open_metrics(config.logging()));

  // Parameters of the whole model (experts of every EP rank), and those active per token.
  double total = 0, active = 0;
  for (const Param* p : store.params()) {
    const double n = static_cast<double>(p->value.numel());
    if (p->group == SyncGroup::kExpert) {
      total += n * grid.layout().expert_parallel;
      active += n * grid.layout().expert_parallel / spec.moe.num_experts * spec.moe.top_k;
    } else {
      total += n;
      active += n;
    }
  }
  log << absl::StrFormat(
      "model: %s, MTP %d | %.2fM params (%.2fM active) | %s | device %s %s | run dir %s\n",
      model_summary(spec), spec.mtp_modules, total / 1e6, active / 1e6, grid.describe(),
      device.str(), dtype_name(compute), options.run_dir);
  const double flops_per_token = train_flops_per_token(spec);
  const PeakFlops peak = device_peak_flops(device, config.logging().peak_tflops());
  log << absl::StrFormat(
      "throughput: %.3g model FLOPs per token (forward + backward) | %s\n", flops_per_token,
      peak.tflops > 0 ? absl::StrFormat("MFU of %.0f TFLOP/s per GPU, %s", peak.tflops, peak.source)
                      : peak.source);

  const int ckpt_every = config.checkpoint().interval();
  const int eval_every = tc.eval_interval();
  const int log_every = std::max(1, tc.log_interval());
  // Where rank 0's console is a terminal, long work between steps redraws a progress line.
  const bool terminal = lead && is_terminal(console);
  // save_checkpoint's summary on rank 0 is the save's one line: "save checkpoint
  // step_NNNNNNNN: <MiB> in <time> (<MiB/s>)".
  auto checkpoint = [&](int64_t step_done) -> absl::Status {
    SY_RETURN_IF_ERROR(check_state_finite(store, optimizer, world, step_done));
    CheckpointState state{.step = step_done, .seed = tc.seed(), .data = feed.position()};
    return save_checkpoint(options.run_dir, state, store, optimizer,
                           config.checkpoint().keep_last(), layout, progress);
  };

  const double lambda = spec.mtp_loss_weight;
  const int max_skipped = tc.max_skipped_steps();
  int64_t skipped_in_row = 0, skipped_total = 0;
  const Eta eta(start_step, steps);
  StepLoop loop;
  loop.start = start_step;
  loop.steps = steps;
  loop.eval_every = eval_every;
  loop.checkpoint_every = ckpt_every;
  loop.resume_hint = absl::StrCat("--resume ", options.run_dir);
  loop.checkpoint = checkpoint;
  loop.step = [&](int64_t step) -> absl::Status {
    const bool profiled = tc.profile_step() == step + 1;
    if (profiled) {
      profile::sync(device);  // the timer starts with an idle GPU
      profile::open(device);
    }
    const auto t0 = std::chrono::steady_clock::now();
    store.zero_grad();
    for (MoeFfn* m : model.moe_layers()) m->stats().reset(spec.moe.num_experts);

    // This rank's micro-batches, and the step's global target counts (the loss normalisers).
    std::vector<TokenBatch> batches;
    std::vector<double> counts(1 + spec.mtp_modules, 0.0);
    for (int64_t i = 0; i < accum; ++i) {
      SY_ASSIGN_OR_RETURN(TokenBatch b, feed.next(micro, spec.seq_len));
      TargetCounts c = model.count_targets(b.targets);
      counts[0] += static_cast<double>(c.lm);
      for (int k = 0; k < spec.mtp_modules; ++k) counts[1 + k] += static_cast<double>(c.mtp[k]);
      batches.push_back(std::move(b));
    }
    world.all_reduce_host(counts, ReduceOp::kSum);
    LossScales scales;
    scales.lm = counts[0] > 0 ? 1.0 / counts[0] : 0.0;
    for (int k = 0; k < spec.mtp_modules; ++k)
      scales.mtp.push_back(counts[1 + k] > 0 ? lambda / spec.mtp_modules / counts[1 + k] : 0.0);
    scales.balance = 1.0 / accum;

    // The losses reach the host while the optimizer is queued: nothing waits for them here.
    std::vector<QueuedLoss> queued;
    for (const TokenBatch& b : batches)
      queued.push_back(model.queue_forward_backward(b.inputs, b.targets, scales));
    {
      profile::Scope region("grad_sync");
      grad_sync->sync();
    }
    if (g_after_backward_hook) g_after_backward_hook(step, store);
    const double lr = schedule.lr(step);
    double norm = 0;
    {
      profile::Scope region("optimizer");
      // A non-finite norm updates nothing (AdamW::step); the routing bias waits for it too.
      norm = optimizer.step(static_cast<float>(lr));
      if (std::isfinite(norm))
        for (MoeFfn* m : model.moe_layers()) m->update_bias();
    }
    std::vector<double> terms(3, 0.0);  // lm, mtp, aux: this rank's shares of the global loss
    for (QueuedLoss& q : queued) {
      const LossTerms t = q.wait();
      terms[0] += t.lm;
      terms[1] += t.mtp;
      terms[2] += t.aux;
    }
    world.all_reduce_host(terms, ReduceOp::kSum);
    if (profiled) profile::sync(device);
    const LossTerms sum{.lm = terms[0], .mtp = terms[1], .aux = terms[2]};
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (profiled) {
      log << absl::StrFormat("profile of step %d (%s):\n", step + 1, device.str())
          << profile::format_table(profile::close(), seconds * 1e3);
      if (device.is_cuda()) {
        const MemoryStats mem = memory_stats(device);
        log << absl::StrFormat(
            "peak memory %.2f GiB (tensors, high-water mark so far); %.2f GiB of freed blocks "
            "cached for reuse\n",
            mem.peak_in_use / double(1 << 30), mem.cached / double(1 << 30));
      }
    }
    const double tokens_per_s =
        static_cast<double>(micro * accum * spec.seq_len * world.size()) / seconds;
    // The console shows the MTP heads' mean CE (comparable with lm); the total uses lambda.
    const double mtp_ce = lambda > 0 ? sum.mtp / lambda : 0.0;

    // The loss and the norm are the same on every rank, so every rank decides alike. A
    // non-finite loss comes with a non-finite gradient (the backward carries it), which is what
    // kept the update from happening; the loss is checked too, as the user's signal.
    const bool skipped = !std::isfinite(norm) || !std::isfinite(sum.total());
    if (skipped) {
      ++skipped_in_row;
      ++skipped_total;
      // "nan", not the C library's "-nan" for a NaN whose sign bit is set.
      auto number = [](double x) {
        return std::isnan(x) ? std::string("nan") : absl::StrFormat("%g", x);
      };
      const std::string what =
          std::isfinite(sum.total())
              ? absl::StrCat("grad norm ", number(norm))
              : absl::StrCat("loss ", number(sum.total()), ", grad norm ", number(norm));
      log << absl::StrFormat("step %d: %s, %s (%d in a row)\n", step + 1,
                             std::isfinite(norm) ? "update taken, but non-finite" : "skipped", what,
                             skipped_in_row);
      log.flush();
      run.metrics(skipped_step_json(step + 1, skipped_in_row, skipped_total));
      if (skipped_in_row > max_skipped) {
        return absl::AbortedError(absl::StrFormat(
            "step %d: %d steps in a row had a non-finite loss or gradient norm (%s), more than "
            "train.max_skipped_steps = %d: the run diverged. No step with a non-finite gradient "
            "norm was applied, and "
            "no checkpoint holds a non-finite value; lower optimizer.lr (now %g), tighten "
            "optimizer.grad_clip or lengthen schedule.warmup_steps, check the data, then resume "
            "from a checkpoint written before the loss went bad (all are finite, but the last "
            "ones may hold the start of the divergence)",
            step + 1, skipped_in_row, what, max_skipped, config.optimizer().lr()));
      }
    } else {
      skipped_in_row = 0;
    }
    if (!skipped && ((step + 1) % log_every == 0 || step + 1 == steps || step == start_step)) {
      // The busiest rank's memory is the one that runs out first.
      double memory_gib = peak_memory_gib(device);
      world.all_reduce_host({&memory_gib, 1}, ReduceOp::kMax);
      const double mfu =
          model_flops_utilization(flops_per_token, tokens_per_s, world.size(), peak.tflops);
      const double eta_s = eta.seconds_left(step + 1);
      const char* memory_key = device.is_cuda() ? "peak_memory_gib" : "peak_rss_gib";
      log << absl::StrFormat(
          "step %d/%d | loss %.4f (lm %.4f mtp %.4f aux %.4f) | lr %.1e | norm %.2f | %.0f ms | "
          "%s tok/s%s | %s %.2f GiB | ETA %s\n",
          step + 1, steps, sum.total(), sum.lm, mtp_ce, sum.aux, lr, norm, seconds * 1e3,
          format_rate(tokens_per_s),
          peak.tflops > 0 ? absl::StrFormat(" | MFU %.1f%%", 100 * mfu) : "",
          device.is_cuda() ? "peak mem" : "peak rss", memory_gib, format_duration(eta_s));
      log.flush();
      run.metrics(absl::StrFormat(
          R"({"step": %d, "loss": %.9g, "lm_loss": %.9g, "mtp_loss": %.9g, "aux_loss": %.9g, "lr": %.9g, "grad_norm": %.9g, "tokens_per_s": %.6g%s, "%s": %.6g, "time_left_s": %.6g})",
          step + 1, sum.total(), sum.lm, mtp_ce, sum.aux, lr, norm, tokens_per_s,
          peak.tflops > 0 ? absl::StrFormat(R"(, "mfu": %.6g)", mfu) : "", memory_key, memory_gib,
          std::max(0.0, eta_s)));
    }
    return absl::OkStatus();
  };
  const bool has_eval_data = feed.task() != nullptr || feed.val() != nullptr;
  loop.evaluate = [&](int64_t done) -> absl::Status {
    if (!has_eval_data) {
      if (done == steps) log << "eval: no validation data (data.val_shards is empty), skipped\n";
      return absl::OkStatus();
    }
    // Replicated on every rank: the MoE layers exchange tokens, so all ranks run it.
    Progress eval_progress(log, absl::StrCat("eval step ", done), 0, "examples", terminal);
    SY_ASSIGN_OR_RETURN(EvalResult e, evaluate(model, feed, micro, world, eval_progress));
    eval_progress.clear();
    if (e.stopped) {
      log << "eval step " << done << ": stopped by signal before the end, no result\n";
      return absl::OkStatus();
    }
    std::string acc, acc_json;
    if (e.accuracy >= 0) {
      acc = absl::StrFormat(" | accuracy %.1f%% (%d/%d)", 100 * e.accuracy, e.correct, e.total);
      acc_json = absl::StrFormat(R"(, "eval_accuracy": %.9g)", e.accuracy);
    }
    log << absl::StrFormat("eval step %d | loss %.4f%s | expert load max/mean %.2f | %.2fs\n", done,
                           e.loss, acc, e.load_max_over_mean, eval_progress.seconds());
    log.flush();
    run.metrics(
        absl::StrFormat(R"({"step": %d, "eval_loss": %.9g%s, "expert_load_max_over_mean": %.6g})",
                        done, e.loss, acc_json, e.load_max_over_mean));
    return absl::OkStatus();
  };
  return run_steps(loop, world, log).status();
}

}  // namespace sy
