// Grouped linear layers on the CPU: one matmul per group over its rows.
#include "kernels/grouped_matmul.h"

#include "kernels/matmul.h"

namespace sy::cpu {

void grouped_matmul(const Tensor& y, const Tensor& x, const Tensor& w, const Tensor& offsets) {
  const int64_t groups = w.dim(0), m = x.dim(0);
  const int64_t* off = offsets.data<int64_t>();
  SY_CHECK(off[0] == 0) << "grouped_matmul: offsets[0] is " << off[0] << ", expected 0";
  for (int64_t e = 0; e < groups; ++e) {
    SY_CHECK(off[e] <= off[e + 1] && off[e + 1] <= m)
        << "grouped_matmul: offsets[" << e << ".." << e + 1 << "] = " << off[e] << ", "
        << off[e + 1] << " are not non-decreasing within the " << m << " rows";
    if (off[e] == off[e + 1]) continue;
    matmul(y.rows(off[e], off[e + 1]), x.rows(off[e], off[e + 1]),
           w.rows(e, e + 1).view({w.dim(1), w.dim(2)}), false, true);
  }
}

}  // namespace sy::cpu
