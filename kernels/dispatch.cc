#include "kernels/dispatch.h"

namespace sy {
void no_kernel(const char* op, Device device) {
  SY_CHECK(false) << op << " has no kernel for " << device.str();
  __builtin_unreachable();
}
}  // namespace sy
