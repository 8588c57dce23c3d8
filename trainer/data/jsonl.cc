#include "trainer/data/jsonl.h"

#include <filesystem>
#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "trainer/regular_file.h"

namespace sy {

absl::Status for_each_jsonl_object(const std::string& path,
                                   const std::function<absl::Status(int64_t, const Json&)>& fn) {
  // A FIFO would block the read forever; a missing file keeps the NotFound below.
  std::error_code exists_error;
  if (std::filesystem::exists(path, exists_error))
    SY_RETURN_IF_ERROR(require_regular_file(path, "JSONL file"));
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::string line;
  int64_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (absl::StripAsciiWhitespace(line).empty()) continue;
    auto json = parse_json(line);
    if (!json.ok())
      return absl::InvalidArgumentError(
          absl::StrCat(path, ":", number, ": not JSON (", json.status().message(), ")"));
    if (!json->is_object())
      return absl::InvalidArgumentError(
          absl::StrCat(path, ":", number, ": expected a JSON object per line"));
    SY_RETURN_IF_ERROR(fn(number, *json));
  }
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read error"));
  return absl::OkStatus();
}

absl::StatusOr<std::string> jsonl_string_field(const Json& object, const std::string& field,
                                               const std::string& path, int64_t line) {
  const Json* v = object.find(field);
  if (v == nullptr)
    return absl::InvalidArgumentError(absl::StrCat(path, ":", line, ": no field \"", field,
                                                   "\" (set the field name to one this file has)"));
  if (v->is_string()) return v->as_string();
  if (v->is_number()) return to_json(*v);
  return absl::InvalidArgumentError(
      absl::StrCat(path, ":", line, ": field \"", field, "\" is not a string"));
}

}  // namespace sy
