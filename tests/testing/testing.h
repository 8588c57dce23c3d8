#pragma once
// Test helpers shared by every suite: seeded random tensors, a closeness assertion that
// reports the worst element, and a central finite-difference gradient checker.
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/tensor.h"

namespace sy::testing {

// A fresh seed per test name, so inputs are random but reproducible.
std::mt19937_64 rng_for_test();

// Normal(0, scale) f32 CPU tensor.
Tensor random_normal(const Shape& shape, std::mt19937_64& rng, float scale = 1.0f);
// Uniform integers in [lo, hi) as an i32 CPU tensor.
Tensor random_ints(const Shape& shape, int32_t lo, int32_t hi, std::mt19937_64& rng);

// Checks |actual - expected| <= atol + rtol * |expected| elementwise; on failure reports the
// worst element, its index and the max abs / rel error.
::testing::AssertionResult all_close(const std::vector<float>& actual,
                                     const std::vector<double>& expected, double rtol, double atol);
::testing::AssertionResult all_close(const Tensor& actual, const std::vector<double>& expected,
                                     double rtol, double atol);
::testing::AssertionResult all_close(const Tensor& actual, const Tensor& expected, double rtol,
                                     double atol);

// Finite-difference check of an analytic gradient. `loss` recomputes a scalar (in double)
// from the current contents of `input`; `analytic` holds dloss/dinput. Checks up to
// `max_elements` randomly chosen elements (all when the tensor is smaller) with central
// differences of step `eps`.
struct GradCheckOptions {
  double eps = 1e-2;
  double rtol = 2e-2;
  double atol = 2e-3;
  int max_elements = 64;
};
::testing::AssertionResult grad_check(const std::function<double()>& loss, const Tensor& input,
                                      const Tensor& analytic, std::mt19937_64& rng,
                                      const GradCheckOptions& options = {});

// A fresh, empty directory for the running test: TempDir/<group>/<suite>.<test>.
std::string fresh_test_dir(const std::string& group);
// A whole file as bytes, and bytes as a whole file.
void write_bytes(const std::string& path, const std::string& bytes);
std::string read_bytes(const std::string& path);

// sum(out * weights) in double: turns any output into a scalar loss whose gradient with
// respect to `out` is `weights`.
double weighted_sum(const Tensor& out, const Tensor& weights);

}  // namespace sy::testing
