#pragma once
// Two kinds of failure, two tools:
//  - what a user can cause (bad config, bad file, bad flag) travels as absl::Status with a
//    message that says what to fix; SY_RETURN_IF_ERROR / SY_ASSIGN_OR_RETURN pass it up.
//  - programming errors and failed CUDA/NCCL/MPI calls abort at once with file:line and
//    the failed condition: SY_CHECK(cond) << "context";
#include <sstream>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace sy {

// Streams a message, then aborts in its destructor. Used only through SY_CHECK.
class CheckFailure {
 public:
  CheckFailure(const char* file, int line, const char* condition);
  [[noreturn]] ~CheckFailure();
  template <typename T>
  CheckFailure& operator<<(const T& value) {
    stream_ << value;
    return *this;
  }

 private:
  std::ostringstream stream_;
};

}  // namespace sy

#define SY_CHECK(cond) \
  if (cond) {          \
  } else               \
    ::sy::CheckFailure(__FILE__, __LINE__, #cond)

#define SY_CONCAT_INNER(a, b) a##b
#define SY_CONCAT(a, b) SY_CONCAT_INNER(a, b)

#define SY_RETURN_IF_ERROR(expr)             \
  do {                                       \
    ::absl::Status sy_status_ = (expr);      \
    if (!sy_status_.ok()) return sy_status_; \
  } while (0)

#define SY_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                             \
  if (!tmp.ok()) return tmp.status();            \
  lhs = std::move(tmp).value()

#define SY_ASSIGN_OR_RETURN(lhs, expr) \
  SY_ASSIGN_OR_RETURN_IMPL(SY_CONCAT(sy_statusor_, __LINE__), lhs, expr)
