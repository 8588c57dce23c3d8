// Rollout row bookkeeping on the CPU, one row at a time (kernels/rollout_rows.h).
#include "kernels/rollout_rows.h"

namespace sy::cpu {

void advance_rollout_rows(const RolloutRows& rows, const Tensor& token, const Tensor& logprob,
                          const Tensor& stop_tokens) {
  const int64_t r_count = token.dim(0), width = rows.out_token.dim(1);
  const int64_t s_count = stop_tokens.dim(0);
  const int32_t* tok = token.data<int32_t>();
  const float* lp = logprob.data<float>();
  const int32_t* stops = s_count ? stop_tokens.data<int32_t>() : nullptr;
  int32_t* generated = rows.generated.data<int32_t>();
  const int32_t* base = rows.base.data<int32_t>();
  int32_t* length = rows.length.data<int32_t>();
  const int32_t* limit = rows.limit.data<int32_t>();
  int32_t* active = rows.active.data<int32_t>();
  int32_t* attend = rows.attend.data<int32_t>();
  int32_t* out_token = rows.out_token.data<int32_t>();
  float* out_logprob = rows.out_logprob.data<float>();
  for (int64_t r = 0; r < r_count; ++r) {
    if (active[r] == 0) continue;
    const int64_t w = generated[r] - base[r];
    SY_CHECK(w >= 0 && w < width) << "advance_rollout_rows: row " << r << " writes column " << w
                                  << " of a window of " << width;
    out_token[r * width + w] = tok[r];
    out_logprob[r * width + w] = lp[r];
    generated[r] += 1;
    length[r] += 1;
    bool stop = generated[r] >= limit[r];
    for (int64_t s = 0; s < s_count && !stop; ++s) stop = tok[r] == stops[s];
    if (stop) active[r] = 0;
    attend[r] = active[r] ? length[r] + 1 : 0;
  }
}

}  // namespace sy::cpu
