#include "tests/testing/testing.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <sstream>

namespace sy::testing {

std::mt19937_64 rng_for_test() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name = info ? std::string(info->test_suite_name()) + "." + info->name() : "none";
  return std::mt19937_64(std::hash<std::string>{}(name));
}

Tensor random_normal(const Shape& shape, std::mt19937_64& rng, float scale) {
  Tensor t = Tensor::empty(shape);
  std::normal_distribution<float> dist(0.0f, scale);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = dist(rng);
  return t;
}

Tensor random_ints(const Shape& shape, int32_t lo, int32_t hi, std::mt19937_64& rng) {
  Tensor t = Tensor::empty(shape, DType::kI32);
  std::uniform_int_distribution<int32_t> dist(lo, hi - 1);
  int32_t* p = t.data<int32_t>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = dist(rng);
  return t;
}

::testing::AssertionResult all_close(const std::vector<float>& actual,
                                     const std::vector<double>& expected, double rtol,
                                     double atol) {
  if (actual.size() != expected.size()) {
    return ::testing::AssertionFailure()
           << "size " << actual.size() << " != expected size " << expected.size();
  }
  size_t worst = 0;
  double worst_excess = -1, max_abs = 0, max_rel = 0;
  int bad = 0;
  for (size_t i = 0; i < actual.size(); ++i) {
    double err = std::fabs(static_cast<double>(actual[i]) - expected[i]);
    if (std::isnan(actual[i]) != std::isnan(expected[i])) err = INFINITY;
    double bound = atol + rtol * std::fabs(expected[i]);
    max_abs = std::max(max_abs, err);
    if (expected[i] != 0) max_rel = std::max(max_rel, err / std::fabs(expected[i]));
    if (err > bound) ++bad;
    if (err - bound > worst_excess) {
      worst_excess = err - bound;
      worst = i;
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << bad << " of " << actual.size() << " elements differ; worst at [" << worst << "]: got "
         << actual[worst] << ", expected " << expected[worst] << " (max abs err " << max_abs
         << ", max rel err " << max_rel << ", rtol " << rtol << ", atol " << atol << ")";
}

::testing::AssertionResult all_close(const Tensor& actual, const std::vector<double>& expected,
                                     double rtol, double atol) {
  return all_close(actual.to_f32_vector(), expected, rtol, atol);
}

::testing::AssertionResult all_close(const Tensor& actual, const Tensor& expected, double rtol,
                                     double atol) {
  if (actual.shape() != expected.shape()) {
    return ::testing::AssertionFailure() << "shape " << shape_str(actual.shape()) << " != expected "
                                         << shape_str(expected.shape());
  }
  std::vector<float> e = expected.to_f32_vector();
  return all_close(actual.to_f32_vector(), std::vector<double>(e.begin(), e.end()), rtol, atol);
}

::testing::AssertionResult grad_check(const std::function<double()>& loss, const Tensor& input,
                                      const Tensor& analytic, std::mt19937_64& rng,
                                      const GradCheckOptions& options) {
  if (input.shape() != analytic.shape()) {
    return ::testing::AssertionFailure() << "gradient shape " << shape_str(analytic.shape())
                                         << " != input shape " << shape_str(input.shape());
  }
  std::vector<int64_t> picks(input.numel());
  for (int64_t i = 0; i < input.numel(); ++i) picks[i] = i;
  std::shuffle(picks.begin(), picks.end(), rng);
  if (static_cast<int64_t>(picks.size()) > options.max_elements) picks.resize(options.max_elements);

  float* x = input.data<float>();
  const float* g = analytic.data<float>();
  std::ostringstream failures;
  int bad = 0;
  for (int64_t i : picks) {
    float saved = x[i];
    x[i] = saved + static_cast<float>(options.eps);
    double up = loss();
    x[i] = saved - static_cast<float>(options.eps);
    double down = loss();
    x[i] = saved;
    double numeric = (up - down) / (2 * options.eps);
    double err = std::fabs(numeric - g[i]);
    if (err > options.atol + options.rtol * std::fabs(numeric)) {
      if (bad < 5) failures << "\n  [" << i << "] analytic " << g[i] << " numeric " << numeric;
      ++bad;
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << bad << " of " << picks.size() << " checked gradient elements differ:" << failures.str();
}

double weighted_sum(const Tensor& out, const Tensor& weights) {
  std::vector<float> a = out.to_f32_vector(), b = weights.to_f32_vector();
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}

std::string fresh_test_dir(const std::string& group) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::filesystem::path dir = std::filesystem::path(::testing::TempDir()) / group /
                              (std::string(info->test_suite_name()) + "." + info->name());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

}  // namespace sy::testing
