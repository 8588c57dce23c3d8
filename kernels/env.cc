#include "kernels/env.h"

#include <cstdlib>
#include <string>
#include <string_view>

#include "kernels/check.h"

namespace sy {

int env_choice(const char* name, std::initializer_list<const char*> values) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return 0;
  std::string list;
  int i = 0;
  for (const char* value : values) {
    if (std::string_view(v) == value) return i;
    list += i == 0 ? "" : i + 1 == static_cast<int>(values.size()) ? " or " : ", ";
    list += value;
    ++i;
  }
  SY_CHECK(false) << name << "=" << v << ": use " << list;
  return 0;
}

}  // namespace sy
