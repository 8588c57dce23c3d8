#pragma once
// JSON Lines input (prompt sets, `data`, `score`): one JSON object per line, blank lines
// skipped. Every error names the file, the 1-based line and, for a field, its name.
#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "trainer/json.h"

namespace sy {

// Calls `fn(line_number, object)` for each non-blank line of `path`, stopping at the first
// error (a line that is not a JSON object, or an error `fn` returns).
absl::Status for_each_jsonl_object(const std::string& path,
                                   const std::function<absl::Status(int64_t, const Json&)>& fn);

// The string under `field` of one line's object; a number is accepted as its JSON spelling
// (GSM8K-style answers are sometimes numbers). Missing or another type: an error naming
// path, line and field.
absl::StatusOr<std::string> jsonl_string_field(const Json& object, const std::string& field,
                                               const std::string& path, int64_t line);

}  // namespace sy
