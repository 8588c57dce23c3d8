#include "models/param_store.h"

#include <random>

#include "kernels/elementwise.h"
#include "kernels/hash.h"

namespace sy {

ParamStore::ParamStore(Device device, DType compute) : device_(device), compute_(compute) {
  SY_CHECK(compute == DType::kF32 || compute == DType::kBF16)
      << "compute dtype must be f32 or bf16, got " << dtype_name(compute);
  SY_CHECK(compute == DType::kF32 || device.is_cuda())
      << "bf16 compute needs a CUDA device (the CPU reference is f32), got " << device.str();
}

Param& ParamStore::add(std::string name, Shape shape, SyncGroup group, Init init, float init_std,
                       bool decay) {
  SY_CHECK(find(name) == nullptr) << "parameter registered twice: " << name;
  Param p;
  p.name = std::move(name);
  p.value = Tensor::zeros(shape, DType::kF32, device_);
  p.grad = Tensor::zeros(shape, DType::kF32, device_);
  if (compute_ != DType::kF32 && shape.size() >= 2)
    p.compute = Tensor::empty(shape, compute_, device_);
  ++version_;
  p.group = group;
  p.init = init;
  p.init_std = init_std;
  p.decay = decay;
  params_.push_back(std::move(p));
  return params_.back();
}

Param* ParamStore::find(const std::string& name) {
  for (Param& p : params_)
    if (p.name == name) return &p;
  return nullptr;
}

const Param* ParamStore::find(const std::string& name) const {
  for (const Param& p : params_)
    if (p.name == name) return &p;
  return nullptr;
}

std::vector<Param*> ParamStore::params() {
  std::vector<Param*> out;
  for (Param& p : params_) out.push_back(&p);
  return out;
}

std::vector<const Param*> ParamStore::params() const {
  std::vector<const Param*> out;
  for (const Param& p : params_) out.push_back(&p);
  return out;
}

void ParamStore::initialize(uint64_t seed) {
  for (Param& p : params_) {
    Tensor host = Tensor::empty(p.value.shape());
    float* v = host.data<float>();
    const int64_t n = host.numel();
    if (p.init == Init::kOnes) {
      for (int64_t i = 0; i < n; ++i) v[i] = 1.0f;
    } else if (p.init == Init::kZeros) {
      for (int64_t i = 0; i < n; ++i) v[i] = 0.0f;
    } else {
      // Expert tensors are stacked [E_local, ...]: one stream per global expert index.
      const bool stacked = p.group == SyncGroup::kExpert;
      const int64_t slices = stacked ? host.dim(0) : 1;
      const int64_t per = slices ? n / slices : 0;
      for (int64_t s = 0; s < slices; ++s) {
        std::mt19937_64 rng(hash_seed(seed, p.name, stacked ? p.expert_offset + s : 0));
        std::normal_distribution<float> dist(0.0f, p.init_std);
        for (int64_t i = 0; i < per; ++i) v[s * per + i] = dist(rng);
      }
    }
    p.value.copy_from(host);
  }
  values_changed();
  zero_grad();
}

void ParamStore::refresh_compute() {
  if (compute_version_ == version_) return;
  for (Param& p : params_)
    if (p.compute.defined()) cast(p.compute, p.value);
  compute_version_ = version_;
}

void ParamStore::zero_grad() {
  for (Param& p : params_) p.grad_unwritten = true;
}

void ParamStore::finish_grads() {
  for (Param& p : params_) grad_to_add(p);
}

float take_grad_beta(Param& p) {
  const bool first = p.grad_unwritten;
  p.grad_unwritten = false;
  return first ? 0.0f : 1.0f;
}

const Tensor& grad_to_add(Param& p) {
  if (p.grad_unwritten) p.grad.zero_();
  p.grad_unwritten = false;
  return p.grad;
}

int64_t ParamStore::num_elements() const {
  int64_t n = 0;
  for (const Param& p : params_) n += p.value.numel();
  return n;
}

}  // namespace sy
