#include "models/rollout/engine.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "kernels/env.h"
#include "kernels/graph.h"
#include "kernels/profile.h"
#include "kernels/rollout_rows.h"
#include "kernels/rope.h"
#include "kernels/sampling.h"
#include "models/rollout/scheduler.h"

namespace sy {
namespace {

Tensor upload_i32(const std::vector<int32_t>& values, Shape shape, Device dev) {
  return Tensor::from_i32(values, std::move(shape)).to(dev);
}

// Writes `host` into `t` where t exists (a decode batch's persistent tensor: a captured
// decode step reads it at its address), else makes t on `dev`.
void put(Tensor& t, const Tensor& host, Device dev) {
  if (t.defined()) {
    t.copy_from(host);
  } else {
    t = host.to(dev);
  }
}
void put_zeros(Tensor& t, Shape shape, DType dtype, Device dev) {
  if (t.defined()) {
    t.zero_();
  } else {
    t = Tensor::zeros(std::move(shape), dtype, dev);
  }
}

Tensor host_i64(const std::vector<uint64_t>& values) {
  Tensor t = Tensor::empty({static_cast<int64_t>(values.size())}, DType::kI64);
  std::copy(values.begin(), values.end(), reinterpret_cast<uint64_t*>(t.data<int64_t>()));
  return t;
}

// SWITCHYARD_DECODE_GRAPHS=0 turns the captured decode steps off (an A/B for the benchmark).
bool decode_graphs_from_env() { return env_choice("SWITCHYARD_DECODE_GRAPHS", {"1", "0"}) == 0; }

SamplingParams param_rows(const SamplingParams& p, int64_t lo, int64_t hi) {
  return {.temperature = p.temperature.rows(lo, hi),
          .top_p = p.top_p.rows(lo, hi),
          .min_p = p.min_p.rows(lo, hi),
          .top_k = p.top_k.rows(lo, hi),
          .seed = p.seed.rows(lo, hi),
          .row_id = p.row_id.rows(lo, hi),
          .position = p.position.rows(lo, hi),
          .active = p.active.rows(lo, hi)};
}

RolloutRows state_rows(const RolloutRows& s, int64_t lo, int64_t hi) {
  return {.generated = s.generated.rows(lo, hi),
          .base = s.base.rows(lo, hi),
          .length = s.length.rows(lo, hi),
          .limit = s.limit.rows(lo, hi),
          .active = s.active.rows(lo, hi),
          .attend = s.attend.rows(lo, hi),
          .out_token = s.out_token.rows(lo, hi),
          .out_logprob = s.out_logprob.rows(lo, hi)};
}

// A rough bound on the activations of one forward of `tokens` tokens (the residual stream,
// attention and FFN intermediates in the compute dtype) plus `rows` rows of f32 logits: what
// must fit beside the KV pool.
int64_t forward_workspace_bytes(const ModelSpec& s, int64_t tokens, int64_t rows, DType dtype) {
  const int64_t q = int64_t{s.n_heads} * s.head_dim();
  const int64_t ffn = std::max<int64_t>(
      3 * int64_t{s.dense_ffn_hidden},
      3 * int64_t{s.moe.expert_hidden} * (s.moe.top_k + s.moe.num_shared_experts));
  const int64_t per_token = 12 * int64_t{s.d_model} + 3 * q + 4 * s.moe.top_k * s.d_model + ffn;
  return tokens * per_token * int64_t(dtype_size(dtype)) + 2 * rows * s.vocab_size * 4;
}

// A prefill forward may hold a whole row of max_len tokens even past the token budget (the
// scheduler gives a prompt longer than the budget a forward of its own).
int64_t prefill_workspace_bytes(const ModelSpec& spec, const EngineOptions& o, DType dtype) {
  const int64_t max_len = o.max_len > 0 ? o.max_len : spec.seq_len;
  return forward_workspace_bytes(spec, std::max(o.prefill_tokens, max_len), 0, dtype);
}

// A row's share of a decode step. With captured steps, every padded row count (1, 2, 4, ..,
// max_rows) keeps its step's tensors in its graph for the call: at most twice max_rows rows.
int64_t row_workspace_bytes(const ModelSpec& spec, const EngineOptions& o, DType dtype) {
  return (o.decode_graphs ? 2 : 1) * forward_workspace_bytes(spec, 1, 1, dtype);
}

}  // namespace

int64_t estimate_rollout_workspace_bytes(const ModelSpec& spec, const EngineOptions& options,
                                         DType dtype) {
  return prefill_workspace_bytes(spec, options, dtype) +
         options.max_rows * row_workspace_bytes(spec, options, dtype);
}

absl::Status validate_sampling_options(const SamplingOptions& o) {
  if (std::isnan(o.temperature)) {
    return absl::InvalidArgumentError("temperature is NaN: give a number (<= 0 for greedy)");
  }
  if (!(o.top_p > 0.0f && o.top_p <= 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_p ", o.top_p, " is outside (0, 1]: give e.g. 0.9, or 1 for no cut"));
  }
  if (!(o.min_p >= 0.0f && o.min_p < 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("min_p ", o.min_p, " is outside [0, 1): give e.g. 0.05, or 0 for no cut"));
  }
  if (o.sampling_top_k < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_k ", o.sampling_top_k, " is negative: give 0 for no limit"));
  }
  if (o.max_new_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_new_tokens ", o.max_new_tokens, " is negative"));
  }
  return absl::OkStatus();
}

const char* finish_reason_name(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStopToken:
      return "stop_token";
    case FinishReason::kStopString:
      return "stop_string";
    case FinishReason::kMaxTokens:
      return "max_new_tokens";
    case FinishReason::kContext:
      return "context";
  }
  return "?";
}

// The decode batch on the device: row r is the scheduler's r-th running sequence, rows past
// them are idle (active 0). Rebuilt from the host at every check point.
struct RolloutEngine::Rows {
  int64_t count = 0;      // R, padded
  Tensor token, logprob;  // i32 / f32 [R]: the last sampled token is the next input
  Tensor slot;            // i32 [R]
  RolloutRows state;
  SamplingParams params;
  Tensor stops;  // i32 [S]
};

// One padded row count's decode batch within a generate call, and its step as a graph.
struct RolloutEngine::DecodeBatch {
  Rows rows;
  CapturedGraph graph;
  int64_t steps_issued = 0;  // steps run as issued, before the capture
};

RolloutEngine::RolloutEngine(Transformer& model, const EngineOptions& options, Communicator* world,
                             std::unique_ptr<KvPool> pool)
    : model_(model), options_(options), world_(world), pool_(std::move(pool)) {
  for (int l = 0; l < model.num_blocks(); ++l) {
    layers_.push_back(std::make_unique<PoolAttention>(*pool_, l, step_));
    attention_.push_back(layers_.back().get());
  }
  if (options.record_routing && model.num_routed_layers() > 0) {
    recorder_ = std::make_unique<RoutingRecorder>(model, options.max_rows, options.max_len, step_);
    model.set_routing_sink(recorder_.get());
  }
}

RolloutEngine::~RolloutEngine() {
  if (recorder_) model_.set_routing_sink(nullptr);
}

absl::StatusOr<std::unique_ptr<RolloutEngine>> RolloutEngine::create(Transformer& model,
                                                                     const EngineOptions& options,
                                                                     Communicator* world) {
  const ModelSpec& spec = model.spec();
  EngineOptions o = options;
  if (o.max_len == 0) o.max_len = spec.seq_len;
  if (o.max_rows <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("rollout engine max_rows ", o.max_rows, ": give a positive row count"));
  }
  if (o.max_len <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("rollout engine max_len ", o.max_len, ": give a positive length"));
  }
  if (o.check_interval <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rollout engine check_interval ", o.check_interval, ": give a positive step count"));
  }
  if (o.prefill_tokens <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rollout engine prefill_tokens ", o.prefill_tokens, ": give a positive token count"));
  }
  const ParamStore& store = model.store();
  const KvPoolShape shape{.layers = model.num_blocks(),
                          .slots = o.max_rows,
                          .max_len = o.max_len,
                          .kv_heads = spec.n_kv_heads,
                          .head_dim = spec.head_dim()};
  const DType dtype = store.compute_dtype();
  const int64_t prefill =
      prefill_workspace_bytes(spec, o, dtype) +
      (o.record_routing ? RoutingRecorder::bytes(spec, o.max_rows, o.max_len) : 0);
  const int64_t per_row = row_workspace_bytes(spec, o, dtype);
  SY_ASSIGN_OR_RETURN(std::unique_ptr<KvPool> pool,
                      KvPool::create(shape, dtype, store.device(), prefill, per_row));
  std::unique_ptr<RolloutEngine> engine(new RolloutEngine(model, o, world, std::move(pool)));
  engine->workspace_bytes_ = prefill + shape.slots * per_row;
  return engine;
}

void RolloutEngine::prefill(Rows& rows, int64_t first_row, const std::vector<int64_t>& ids,
                            const std::vector<std::vector<int32_t>>& prompts) {
  profile::Scope region("rollout.prefill");
  const Device dev = model_.store().device();
  const int64_t b = static_cast<int64_t>(ids.size());
  int64_t t = 0;
  for (int64_t id : ids) t = std::max<int64_t>(t, prompts[id].size());
  std::vector<int32_t> tokens(b * t, 0), positions(b * t), count(b), last(b), slots(b);
  for (int64_t r = 0; r < b; ++r) {
    const std::vector<int32_t>& p = prompts[ids[r]];
    std::copy(p.begin(), p.end(), tokens.begin() + r * t);
    for (int64_t i = 0; i < t; ++i) positions[r * t + i] = static_cast<int32_t>(i);
    count[r] = static_cast<int32_t>(p.size());
    last[r] = static_cast<int32_t>(r * t + p.size() - 1);
  }
  TokenLayout layout;
  layout.batch = b;
  layout.seq = t;
  layout.positions = upload_i32(positions, {b, t}, dev);
  layout.rope = rope_table(layout.positions, model_.spec().head_dim(), model_.spec().rope_theta);
  step_.mode = PoolStep::Mode::kPrefill;
  step_.slot = rows.slot.rows(first_row, first_row + b);
  step_.start = Tensor::zeros({b}, DType::kI32, dev);
  step_.count = upload_i32(count, {b}, dev);
  step_.attend = Tensor();
  const Tensor logits = model_.forward_with_cache(upload_i32(tokens, {b, t}, dev), layout,
                                                  attention_, upload_i32(last, {b}, dev));
  const int64_t lo = first_row, hi = first_row + b;
  sample_tokens(rows.token.rows(lo, hi), rows.logprob.rows(lo, hi), logits,
                param_rows(rows.params, lo, hi));
  advance_rollout_rows(state_rows(rows.state, lo, hi), rows.token.rows(lo, hi),
                       rows.logprob.rows(lo, hi), rows.stops);
}

void RolloutEngine::idle_prefill() {
  profile::Scope region("rollout.prefill");
  const Device dev = model_.store().device();
  TokenLayout layout;
  layout.batch = 1;
  layout.seq = 1;
  layout.positions = Tensor::zeros({1, 1}, DType::kI32, dev);
  step_.mode = PoolStep::Mode::kPrefill;
  step_.slot = Tensor::zeros({1}, DType::kI32, dev);
  step_.start = Tensor::zeros({1}, DType::kI32, dev);
  step_.count = Tensor::zeros({1}, DType::kI32, dev);  // stores nothing
  step_.attend = Tensor();
  model_.forward_with_cache(Tensor::zeros({1, 1}, DType::kI32, dev), layout, attention_,
                            Tensor::zeros({1}, DType::kI32, dev));
}

void RolloutEngine::decode_step(Rows& rows) {
  profile::Scope region("rollout.decode");
  const int64_t r = rows.count;
  TokenLayout layout;
  layout.batch = r;
  layout.seq = 1;
  layout.positions = rows.state.length.view({r, 1});
  layout.rope = rope_table(layout.positions, model_.spec().head_dim(), model_.spec().rope_theta);
  step_.mode = PoolStep::Mode::kDecode;
  step_.slot = rows.slot;
  step_.start = rows.state.length;
  step_.count = rows.state.active;
  step_.attend = rows.state.attend;
  const Tensor logits = model_.forward_with_cache(rows.token.view({r, 1}), layout, attention_);
  sample_tokens(rows.token, rows.logprob, logits, rows.params);
  advance_rollout_rows(rows.state, rows.token, rows.logprob, rows.stops);
}

absl::StatusOr<std::vector<Completion>> RolloutEngine::generate(
    const std::vector<std::vector<int32_t>>& prompts, const SamplingOptions& options,
    uint64_t first_row_id) {
  const ModelSpec& spec = model_.spec();
  const int64_t n = static_cast<int64_t>(prompts.size());
  const bool collective = world_ && world_->size() > 1;
  std::vector<int64_t> limit(n, 0);  // the most new tokens of each row

  // Every rank learns whether any rank's input was refused before the first collective
  // forward, so that no rank waits in a step the others never join.
  absl::Status status = validate_sampling_options(options);
  for (int64_t i = 0; i < n && status.ok(); ++i) {
    const int64_t p = static_cast<int64_t>(prompts[i].size());
    if (p == 0) {
      status = absl::InvalidArgumentError(absl::StrCat("prompt ", i, " is empty"));
      break;
    }
    for (int32_t tok : prompts[i]) {
      if (tok < 0 || tok >= spec.vocab_size) {
        status = absl::InvalidArgumentError(absl::StrCat(
            "prompt ", i, " holds token ", tok, ", outside the vocabulary of ", spec.vocab_size));
        break;
      }
    }
    if (!status.ok()) break;
    if (p > spec.seq_len) {
      status = absl::InvalidArgumentError(
          absl::StrCat("prompt ", i, " has ", p, " tokens, longer than the model's context of ",
                       spec.seq_len, " (model.seq_len): shorten it"));
      break;
    }
    // The model reads at most seq_len positions; the token sampled from the last of them is
    // never read back, so prompt + completion reach seq_len + 1 tokens (a training sequence
    // of seq_len inputs and their targets).
    limit[i] = std::min<int64_t>(options.max_new_tokens, spec.seq_len + 1 - p);
    // The last token is sampled, never cached: P + limit - 1 positions.
    if (limit[i] > 0 && p + limit[i] - 1 > options_.max_len) {
      status = absl::InvalidArgumentError(
          absl::StrCat("prompt ", i, " has ", p, " tokens and may take ", limit[i],
                       " new ones, more than the rollout engine's ", options_.max_len,
                       " cached positions per row: create the engine with a larger max_len"));
    }
  }
  if (collective) {
    double refused = status.ok() ? 0 : 1;
    world_->all_reduce_host({&refused, 1}, ReduceOp::kMax);
    if (status.ok() && refused > 0) {
      return absl::InvalidArgumentError(
          "generate: another rank's prompts or options were refused (its error says why)");
    }
  }
  if (!status.ok()) return status;

  std::vector<Completion> out(n);
  Scheduler scheduler(options_.max_rows, options_.prefill_tokens);
  for (int64_t i = 0; i < n; ++i) {
    if (limit[i] > 0) {
      scheduler.add(i, static_cast<int64_t>(prompts[i].size()));
    } else {
      out[i].finish =
          options.max_new_tokens == 0 ? FinishReason::kMaxTokens : FinishReason::kContext;
    }
  }
  const Device dev = model_.store().device();
  const std::set<int32_t> stop_set(options.stop_tokens.begin(), options.stop_tokens.end());
  const Tensor stops =
      upload_i32(options.stop_tokens, {static_cast<int64_t>(options.stop_tokens.size())}, dev);
  const int64_t width = options_.check_interval + 1;  // a window: a prefill + the decode steps
  // Captured decode steps (kernels/graph.h) where the step needs no host: on a GPU, one rank,
  // no profile open (its events would be captured), every MoE layer's experts on the device.
  // A graph lives for this call (the weights may move between calls).
  const bool graphs = options_.decode_graphs && CapturedGraph::supported(dev) && !collective &&
                      !profile::is_open() && decode_graphs_from_env();
  std::map<int64_t, DecodeBatch> batches_by_rows;
  decode_stats_ = {};

  while (true) {
    const std::vector<std::vector<Scheduler::Running>> batches = scheduler.admit();
    double agree[2] = {scheduler.done() ? 0.0 : 1.0, static_cast<double>(batches.size())};
    if (collective) world_->all_reduce_host(agree, ReduceOp::kMax);
    if (agree[0] == 0) break;

    // The decode batch, from the host's view of every running row (the new ones last, in
    // admission order, as the scheduler lists them).
    const std::vector<Scheduler::Running>& running = scheduler.running();
    const int64_t live = static_cast<int64_t>(running.size());
    const int64_t r_count = scheduler.decode_rows(live);
    std::vector<int32_t> token(r_count, 0), slot(r_count, 0), generated(r_count, 0),
        length(r_count, 0), lim(r_count, 0), active(r_count, 0), attend(r_count, 0),
        top_k(r_count, options.sampling_top_k);
    std::vector<float> temperature(r_count, options.temperature), top_p(r_count, options.top_p),
        min_p(r_count, options.min_p);
    std::vector<uint64_t> seed(r_count, options.seed), row_id(r_count, 0);
    for (int64_t r = 0; r < live; ++r) {
      const Scheduler::Running& s = running[r];
      const Completion& c = out[s.id];
      const int64_t g = static_cast<int64_t>(c.tokens.size());
      slot[r] = static_cast<int32_t>(s.slot);
      generated[r] = static_cast<int32_t>(g);
      length[r] = static_cast<int32_t>(s.prompt_len + g - 1);
      lim[r] = static_cast<int32_t>(limit[s.id]);
      active[r] = 1;
      // A new row (no token yet) gets its first token, and attend, from its prefill.
      token[r] = g > 0 ? c.tokens.back() : 0;
      attend[r] = g > 0 ? length[r] + 1 : 0;
      row_id[r] = first_row_id + static_cast<uint64_t>(s.id);
    }
    // The batch's tensors persist for the call, per padded row count: written in place here,
    // they stay where a captured decode step reads them.
    DecodeBatch& batch = batches_by_rows[r_count];
    Rows& rows = batch.rows;
    rows.count = r_count;
    const Shape shape{r_count};
    put(rows.token, Tensor::from_i32(token, shape), dev);
    put_zeros(rows.logprob, shape, DType::kF32, dev);
    put(rows.slot, Tensor::from_i32(slot, shape), dev);
    RolloutRows& st = rows.state;
    put(st.generated, Tensor::from_i32(generated, shape), dev);
    put(st.base, Tensor::from_i32(generated, shape), dev);
    put(st.length, Tensor::from_i32(length, shape), dev);
    put(st.limit, Tensor::from_i32(lim, shape), dev);
    put(st.active, Tensor::from_i32(active, shape), dev);
    put(st.attend, Tensor::from_i32(attend, shape), dev);
    put_zeros(st.out_token, {r_count, width}, DType::kI32, dev);
    put_zeros(st.out_logprob, {r_count, width}, DType::kF32, dev);
    SamplingParams& sp = rows.params;
    put(sp.temperature, Tensor::from_f32(temperature, shape), dev);
    put(sp.top_p, Tensor::from_f32(top_p, shape), dev);
    put(sp.min_p, Tensor::from_f32(min_p, shape), dev);
    put(sp.top_k, Tensor::from_i32(top_k, shape), dev);
    put(sp.seed, host_i64(seed), dev);
    put(sp.row_id, host_i64(row_id), dev);
    sp.position = st.generated;
    sp.active = st.active;
    rows.stops = stops;

    int64_t first_new = live;
    for (const auto& batch : batches) first_new -= static_cast<int64_t>(batch.size());
    for (int64_t b = 0; b < static_cast<int64_t>(agree[1]); ++b) {
      if (b < static_cast<int64_t>(batches.size())) {
        std::vector<int64_t> ids;
        for (const Scheduler::Running& s : batches[b]) ids.push_back(s.id);
        prefill(rows, first_new, ids, prompts);
        first_new += static_cast<int64_t>(ids.size());
      } else {
        idle_prefill();
      }
    }
    // The decode steps: the first step of a batch size runs as issued (it also warms what
    // its kernels set up once); the second captures the step as a graph, which then replays.
    const bool graph = graphs && model_.cache_forward_issues_without_host(r_count);
    for (int step = 0; step < options_.check_interval; ++step) {
      if (graph && batch.graph.captured()) {
        batch.graph.replay();
        ++decode_stats_.steps_replayed;
      } else if (graph && batch.steps_issued > 0) {
        batch.graph.capture(dev, [&] { decode_step(rows); });
        batch.graph.replay();
        ++decode_stats_.graphs;
        ++decode_stats_.steps_replayed;
      } else {
        decode_step(rows);
        ++batch.steps_issued;
        ++decode_stats_.steps_issued;
      }
    }

    // The check point: the window's tokens and the rows' states, in one wait.
    HostReadback read_generated(rows.state.generated), read_active(rows.state.active),
        read_tokens(rows.state.out_token), read_logprobs(rows.state.out_logprob);
    const std::vector<int32_t> now = read_generated.wait().to_i32_vector();
    const std::vector<int32_t> still = read_active.wait().to_i32_vector();
    const std::vector<int32_t> window = read_tokens.wait().to_i32_vector();
    const std::vector<float> window_lp = read_logprobs.wait().to_f32_vector();
    std::vector<int64_t> finished;
    std::vector<std::pair<int64_t, int64_t>> finished_routes;  // (slot, positions)
    for (int64_t r = 0; r < live; ++r) {
      const int64_t id = running[r].id;
      Completion& c = out[id];
      for (int64_t g = generated[r]; g < now[r]; ++g) {
        c.tokens.push_back(window[r * width + (g - generated[r])]);
        c.logprobs.push_back(window_lp[r * width + (g - generated[r])]);
      }
      bool done = still[r] == 0;
      if (done) {
        if (stop_set.count(c.tokens.back())) {
          c.finish = FinishReason::kStopToken;
        } else if (static_cast<int64_t>(c.tokens.size()) >= options.max_new_tokens) {
          c.finish = FinishReason::kMaxTokens;
        } else {
          c.finish = FinishReason::kContext;
        }
      }
      if (options.stop_check && now[r] > generated[r]) {
        const int64_t cut = options.stop_check(c.tokens);
        if (cut >= 0 && cut <= static_cast<int64_t>(c.tokens.size())) {
          c.tokens.resize(cut);
          c.logprobs.resize(cut);
          c.finish = FinishReason::kStopString;
          done = true;
        }
      }
      if (done) finished.push_back(id);
      if (done && recorder_) {
        const int64_t inputs = running[r].prompt_len + static_cast<int64_t>(c.tokens.size()) - 1;
        finished_routes.push_back({running[r].slot, inputs});
      }
    }
    if (recorder_) {  // the finished rows' routes, read before their slots take new sequences
      std::vector<std::vector<int32_t>> routes = recorder_->read(finished_routes);
      for (size_t i = 0; i < finished.size(); ++i) out[finished[i]].routes = std::move(routes[i]);
    }
    for (int64_t id : finished) scheduler.retire(id);
  }
  return out;
}

}  // namespace sy
