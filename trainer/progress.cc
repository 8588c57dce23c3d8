#include "trainer/progress.h"

#include <sys/resource.h>
#include <unistd.h>

#include <cmath>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#ifdef SWITCHYARD_HAVE_CUDA
#include "kernels/cuda/device.h"
#endif

namespace sy {
namespace {

// Multiply-adds of one token's pass through one block (attention + FFN), forward.
double block_macs(const ModelSpec& spec, bool moe) {
  const double d = spec.d_model, t = spec.seq_len;
  const double q = static_cast<double>(spec.n_heads) * spec.head_dim();
  const double kv = static_cast<double>(spec.n_kv_heads) * spec.head_dim();
  // wq, wk, wv, wo; then q.k over seq_len keys and the weights times v, per head.
  const double attention = d * q + 2 * d * kv + q * d + 2 * t * q;
  double ffn = 0;
  if (moe) {
    const MoeSpec& m = spec.moe;
    ffn = d * m.num_experts  // router
          + (static_cast<double>(m.top_k) + m.num_shared_experts) * 3 * d * m.expert_hidden;
  } else {
    ffn = 3 * d * spec.dense_ffn_hidden;  // w1 and w3 (one w13), w2
  }
  return attention + ffn;
}

// Peak dense bf16 TFLOP/s from NVIDIA's data sheets (their "with sparsity" figures halved).
// The first row whose key the name contains wins, so a more specific key comes first
// ("H100 PCIe" before "H100", "H200" before "H20", "L40S" before "L40" before "L4").
struct KnownGpu {
  const char* key;
  double tflops;
};
constexpr KnownGpu kKnownGpus[] = {
    {"H100 PCIe", 756}, {"H100 NVL", 835}, {"H200 NVL", 835}, {"H800 PCIe", 756},
    {"H100", 989},      {"H200", 989},     {"H800", 989},     {"H20", 148},
    {"GB200", 2500},    {"B200", 2250},    {"B100", 1750},    {"A100", 312},
    {"A800", 312},      {"L40S", 362},     {"L40", 181},      {"L4", 121},
};

std::string format_count(double x) {
  if (x >= 1e9) return absl::StrFormat("%.2fG", x / 1e9);
  if (x >= 1e6) return absl::StrFormat("%.2fM", x / 1e6);
  if (x >= 1e3) return absl::StrFormat("%.1fk", x / 1e3);
  return absl::StrFormat("%.0f", x);
}

}  // namespace

double train_flops_per_token(const ModelSpec& spec) {
  const double d = spec.d_model, vocab = spec.vocab_size;
  double macs = 0;
  for (int l = 0; l < spec.n_layers; ++l) macs += block_macs(spec, spec.is_moe_layer(l));
  macs += d * vocab;  // the output head
  // An MTP module: its projection of [h; emb] (2d -> d), one block (MoE when the trunk has
  // MoE layers, as models/transformer.cc builds it), and the shared head again.
  macs += spec.mtp_modules * (2 * d * d + block_macs(spec, spec.has_moe()) + d * vocab);
  return 3 * 2 * macs;
}

double known_gpu_peak_tflops(std::string_view gpu_name) {
  for (const KnownGpu& g : kKnownGpus)
    if (gpu_name.find(g.key) != std::string_view::npos) return g.tflops;
  return 0;
}

PeakFlops device_peak_flops(Device device, double configured_tflops) {
  if (!device.is_cuda()) return {0, "no MFU on the CPU"};
  if (configured_tflops > 0) return {configured_tflops, "logging.peak_tflops"};
  std::string name = device.str();
#ifdef SWITCHYARD_HAVE_CUDA
  name = cuda::device_description(device.index);
#endif
  const double table = known_gpu_peak_tflops(name);
  if (table > 0) return {table, absl::StrCat(name, " (table)")};
  return {0, absl::StrCat("no MFU: ", name,
                          " is not in the table of known GPUs; set logging { peak_tflops: N } to "
                          "its dense bf16 TFLOP/s")};
}

double model_flops_utilization(double flops_per_token, double tokens_per_s, int devices,
                               double peak_tflops) {
  if (peak_tflops <= 0 || devices <= 0) return 0;
  return flops_per_token * tokens_per_s / (devices * peak_tflops * 1e12);
}

double peak_memory_gib(Device device) {
  if (device.is_cuda()) return memory_stats(device).peak_in_use / double(1 << 30);
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss / double(1 << 20);  // KiB on Linux
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const int64_t s = std::llround(seconds);
  if (s < 60) return absl::StrFormat("%ds", s);
  if (s < 3600) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  if (s < 86400) return absl::StrFormat("%dh%02dm", s / 3600, s % 3600 / 60);
  return absl::StrFormat("%dd%02dh", s / 86400, s % 86400 / 3600);
}

double Eta::seconds_left(int64_t done, Clock::time_point now) const {
  if (done >= last_) return 0;
  if (done <= first_) return -1;  // nothing measured yet
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  return elapsed / static_cast<double>(done - first_) * static_cast<double>(last_ - done);
}

Progress::Progress(std::ostream& out, std::string what, int64_t total, std::string unit,
                   bool terminal, Clock::duration interval, Clock::time_point start)
    : out_(out),
      what_(std::move(what)),
      unit_(std::move(unit)),
      total_(total),
      terminal_(terminal),
      interval_(interval),
      start_(start),
      last_(start) {}

void Progress::count_also(std::string unit, std::string rate_unit) {
  also_unit_ = std::move(unit);
  also_rate_unit_ = std::move(rate_unit);
}

// "250 tensors", or "12.5 MiB" for bytes.
std::string Progress::amount(int64_t n) const {
  if (unit_ == "bytes") return absl::StrFormat("%.1f MiB", n / double(1 << 20));
  return absl::StrCat(n, " ", unit_);
}

// "250/1000 tensors", "12.5/40.0 MiB"; without the total, as amount().
std::string Progress::done_text(int64_t done, bool with_total) const {
  if (!with_total) return amount(done);
  if (unit_ == "bytes") return absl::StrFormat("%.1f/%s", done / double(1 << 20), amount(total_));
  return absl::StrCat(done, "/", amount(total_));
}

std::string Progress::rate(double per_s) const {
  if (unit_ == "bytes") return absl::StrFormat("%.1f MiB/s", per_s / double(1 << 20));
  return absl::StrCat(format_count(per_s), " ", unit_, "/s");
}

std::string Progress::also_text(int64_t also, double s) const {
  if (also_unit_.empty()) return "";
  return absl::StrCat(" | ", also, " ", also_unit_, " (", format_count(s > 0 ? also / s : 0), " ",
                      also_rate_unit_, ")");
}

std::string Progress::line(int64_t done, int64_t also, Clock::time_point now) const {
  const double s = std::chrono::duration<double>(now - start_).count();
  const double per_s = s > 0 ? done / s : 0;
  std::string text = absl::StrCat(what_, ": ", done_text(done, total_ > 0), " | ", rate(per_s),
                                  also_text(also, s));
  if (total_ > 0 && done < total_ && per_s > 0)
    absl::StrAppend(&text, " | ETA ", format_duration((total_ - done) / per_s));
  return text;
}

void Progress::update(int64_t done, Clock::time_point now) { update(done, 0, now); }

void Progress::update(int64_t done, int64_t also, Clock::time_point now) {
  if (!terminal_ || now - last_ < interval_) return;
  last_ = now;
  // \r and "erase to the end of the line": the new text may be shorter than the old.
  out_ << "\r" << line(done, also, now) << "\x1b[K" << std::flush;
  drawn_ = true;
}

void Progress::finish(int64_t done, const std::string& detail, Clock::time_point now) {
  finish(done, 0, detail, now);
}

void Progress::finish(int64_t done, int64_t also, const std::string& detail,
                      Clock::time_point now) {
  if (drawn_) out_ << "\r\x1b[K";
  const double s = std::chrono::duration<double>(now - start_).count();
  std::string text = absl::StrCat(what_, ": ", done_text(done, total_ > 0 && done != total_));
  absl::StrAppend(&text, " in ", s < 10 ? absl::StrFormat("%.2fs", s) : format_duration(s));
  if (s > 0) absl::StrAppend(&text, " (", rate(done / s), ")");
  out_ << text << also_text(also, s) << detail << "\n" << std::flush;
  drawn_ = false;
}

void Progress::clear() {
  if (drawn_) out_ << "\r\x1b[K" << std::flush;
  drawn_ = false;
}

bool is_terminal(const std::ostream& out) {
  if (&out == &std::cout) return isatty(STDOUT_FILENO) == 1;
  if (&out == &std::cerr) return isatty(STDERR_FILENO) == 1;
  return false;
}

}  // namespace sy
