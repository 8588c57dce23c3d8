#include "rl/advantages.h"

#include <algorithm>
#include <cmath>

#include "rl/token_checks.h"

namespace sy::rl {
namespace {

int64_t num_groups(std::span<const float> rewards, int64_t group_size) {
  SY_CHECK(group_size >= 2) << "a group needs at least 2 completions, got " << group_size;
  SY_CHECK(rewards.size() % group_size == 0)
      << rewards.size() << " rewards do not split into groups of " << group_size;
  return static_cast<int64_t>(rewards.size()) / group_size;
}

bool all_equal(std::span<const float> group) {
  return std::all_of(group.begin(), group.end(), [&](float r) { return r == group[0]; });
}

// Indices of row b's response tokens, in order.
std::vector<int64_t> response_tokens(const float* mask, int64_t b, int64_t seq_len) {
  std::vector<int64_t> idx;
  for (int64_t t = 0; t < seq_len; ++t)
    if (mask[b * seq_len + t] != 0) idx.push_back(b * seq_len + t);
  return idx;
}

}  // namespace

std::vector<float> group_advantages(std::span<const float> rewards, int64_t group_size,
                                    const GroupAdvantageOptions& options) {
  const int64_t groups = num_groups(rewards, group_size);
  SY_CHECK(options.eps >= 0) << "eps must be >= 0, got " << options.eps;
  std::vector<float> advantages(rewards.size(), 0.0f);
  for (int64_t g = 0; g < groups; ++g) {
    std::span<const float> r = rewards.subspan(g * group_size, group_size);
    // Exactly zero, not mean-subtraction round-off amplified by a tiny std.
    if (all_equal(r)) continue;
    double mean = 0;
    for (float x : r) mean += x;
    mean /= group_size;
    double scale = 1;
    if (options.normalize_std) {
      double ss = 0;
      for (float x : r) ss += (x - mean) * (x - mean);
      scale = 1 / (std::sqrt(ss / (group_size - 1)) + options.eps);
    }
    for (int64_t i = 0; i < group_size; ++i)
      advantages[g * group_size + i] = static_cast<float>((r[i] - mean) * scale);
  }
  return advantages;
}

GroupFilter filter_equal_reward_groups(std::span<const float> rewards, int64_t group_size) {
  const int64_t groups = num_groups(rewards, group_size);
  GroupFilter filter;
  for (int64_t g = 0; g < groups; ++g) {
    (all_equal(rewards.subspan(g * group_size, group_size)) ? filter.dropped : filter.kept)
        .push_back(g);
  }
  return filter;
}

void broadcast_to_tokens(const Tensor& tokens, std::span<const float> per_sequence,
                         const Tensor& mask) {
  check_mask(mask);
  check_per_token(tokens, mask, "tokens");
  const int64_t batch = mask.dim(0), seq_len = mask.dim(1);
  SY_CHECK(static_cast<int64_t>(per_sequence.size()) == batch)
      << per_sequence.size() << " per-sequence values for a batch of " << batch;
  const float* m = mask.data<float>();
  float* out = tokens.data<float>();
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < seq_len; ++t)
      out[b * seq_len + t] = m[b * seq_len + t] != 0 ? per_sequence[b] : 0.0f;
}

void add_at_last_token(const Tensor& token_rewards, std::span<const float> rewards,
                       const Tensor& mask) {
  check_mask(mask);
  check_per_token(token_rewards, mask, "token_rewards");
  const int64_t batch = mask.dim(0), seq_len = mask.dim(1);
  SY_CHECK(static_cast<int64_t>(rewards.size()) == batch)
      << rewards.size() << " rewards for a batch of " << batch;
  const float* m = mask.data<float>();
  float* out = token_rewards.data<float>();
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = seq_len - 1; t >= 0; --t) {
      if (m[b * seq_len + t] != 0) {
        out[b * seq_len + t] += rewards[b];
        break;
      }
    }
  }
}

void gae(std::span<float> advantages, std::span<float> returns, std::span<const float> rewards,
         std::span<const float> values, double gamma, double lambda) {
  const size_t n = rewards.size();
  SY_CHECK(values.size() == n && advantages.size() == n && returns.size() == n)
      << "GAE needs as many values (" << values.size() << "), advantages (" << advantages.size()
      << ") and returns (" << returns.size() << ") as rewards (" << n << ")";
  double next_value = 0, next_advantage = 0;
  for (size_t k = n; k-- > 0;) {
    const double delta = rewards[k] + gamma * next_value - values[k];
    const double a = delta + gamma * lambda * next_advantage;
    advantages[k] = static_cast<float>(a);
    returns[k] = static_cast<float>(a + values[k]);
    next_value = values[k];
    next_advantage = a;
  }
}

void gae(const Tensor& advantages, const Tensor& returns, const Tensor& rewards,
         const Tensor& values, const Tensor& mask, double gamma, double lambda) {
  check_mask(mask);
  check_per_token(advantages, mask, "advantages");
  check_per_token(returns, mask, "returns");
  check_per_token(rewards, mask, "rewards");
  check_per_token(values, mask, "values");
  advantages.zero_();
  returns.zero_();
  const int64_t batch = mask.dim(0), seq_len = mask.dim(1);
  const float* m = mask.data<float>();
  const float* r = rewards.data<float>();
  const float* v = values.data<float>();
  float* a = advantages.data<float>();
  float* ret = returns.data<float>();
  for (int64_t b = 0; b < batch; ++b) {
    const std::vector<int64_t> idx = response_tokens(m, b, seq_len);
    const size_t n = idx.size();
    std::vector<float> rs(n), vs(n), as(n), rets(n);
    for (size_t k = 0; k < n; ++k) {
      rs[k] = r[idx[k]];
      vs[k] = v[idx[k]];
    }
    gae(as, rets, rs, vs, gamma, lambda);
    for (size_t k = 0; k < n; ++k) {
      a[idx[k]] = as[k];
      ret[idx[k]] = rets[k];
    }
  }
}

void whiten_advantages(const Tensor& advantages, const Tensor& mask, bool keep_mean, double eps) {
  check_mask(mask);
  check_per_token(advantages, mask, "advantages");
  const float* m = mask.data<float>();
  float* a = advantages.data<float>();
  double sum = 0;
  int64_t count = 0;
  for (int64_t i = 0; i < mask.numel(); ++i) {
    if (m[i] == 0) continue;
    sum += a[i];
    ++count;
  }
  SY_CHECK(count >= 2) << "whitening needs at least 2 response tokens, got " << count;
  const double mean = sum / count;
  double ss = 0;
  for (int64_t i = 0; i < mask.numel(); ++i)
    if (m[i] != 0) ss += (a[i] - mean) * (a[i] - mean);
  const double inv_std = 1 / std::sqrt(ss / (count - 1) + eps);
  for (int64_t i = 0; i < mask.numel(); ++i) {
    a[i] =
        m[i] == 0 ? 0.0f : static_cast<float>((a[i] - mean) * inv_std + (keep_mean ? mean : 0.0));
  }
}

}  // namespace sy::rl
