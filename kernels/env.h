#pragma once
// Choices a process reads from its environment (the SWITCHYARD_* knobs that pick a kernel or
// a path, mostly for A/B runs of the benchmarks).
#include <initializer_list>

namespace sy {

// The index in `values` of environment variable `name`'s value, 0 (the first value, the
// default) where it is unset or empty. Any other value aborts, naming the values it takes:
// "NAME=v: use a, b or c".
int env_choice(const char* name, std::initializer_list<const char*> values);

}  // namespace sy
