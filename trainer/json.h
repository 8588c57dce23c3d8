#pragma once
// A JSON value, parser and writer for the JSON files switchyard reads and writes: the
// safetensors header, the checkpoint manifest, metrics.jsonl, Hugging Face config.json and
// tokenizer.json, JSONL data. nlohmann-json lexes and escapes (json.cc); this type and its
// builder keep what those files need and are strict about everything else.
//
//  - Numbers: an integer literal that fits int64 is kept as an exact int64 (byte offsets and
//    step counts must not round through double); any other number is a double (one below
//    the smallest double reads as 0).
//  - Objects keep their keys in insertion / file order (headers and manifests stay diffable);
//    a duplicate key is a parse error, because "last one wins" would hide a corrupt file.
//  - Strings are UTF-8, as RFC 8259 requires of JSON text: \uXXXX escapes (surrogate pairs
//    included) decode to UTF-8, and a string that is not valid UTF-8 is a parse error. A
//    leading UTF-8 byte order mark is skipped (offsets still count it).
//  - to_json writes compact JSON; a non-finite double (NaN, inf), which JSON cannot spell,
//    is written as null, and bytes of a built string that are not UTF-8 as U+FFFD, so what
//    it writes always reads back.
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/check.h"

namespace sy {

class Json {
 public:
  enum class Type : uint8_t { kNull, kBool, kNumber, kString, kArray, kObject };
  using Array = std::vector<Json>;
  using Object = std::vector<std::pair<std::string, Json>>;

  Json() = default;  // null
  Json(std::nullptr_t) {}
  Json(bool value) : value_(value) {}
  template <std::integral T>
  requires(!std::same_as<T, bool>) Json(T value) : value_(static_cast<int64_t>(value)) {
    SY_CHECK(std::in_range<int64_t>(value)) << "JSON integer " << value << " does not fit int64";
  }
  Json(double value) : value_(value) {}
  Json(const char* value) : value_(std::string(value)) {}
  Json(std::string value) : value_(std::move(value)) {}
  Json(std::string_view value) : value_(std::string(value)) {}
  Json(Array value) : value_(std::move(value)) {}
  Json(Object value) : value_(std::move(value)) {}
  // Any other pointer would silently become a bool.
  Json(const void*) = delete;

  Type type() const;
  bool is_null() const { return type() == Type::kNull; }
  bool is_bool() const { return type() == Type::kBool; }
  bool is_number() const { return type() == Type::kNumber; }
  // A number held exactly as int64 (an integer literal, or built from an integer).
  bool is_int() const { return std::holds_alternative<int64_t>(value_); }
  bool is_string() const { return type() == Type::kString; }
  bool is_array() const { return type() == Type::kArray; }
  bool is_object() const { return type() == Type::kObject; }

  // Accessors check the type (a wrong one is a programming error: test is_*() first when
  // the value comes from a file).
  bool as_bool() const;
  int64_t as_int() const;
  double as_double() const;  // any number
  const std::string& as_string() const;
  const Array& as_array() const;
  Array& as_array();
  const Object& as_object() const;
  Object& as_object();

  // Object lookup: the value under `key`, or nullptr when absent. Checks is_object().
  const Json* find(std::string_view key) const;
  // Object update: replaces the value under `key`, or appends it (keeping key order).
  Json& set(std::string_view key, Json value);

  bool operator==(const Json& other) const = default;

 private:
  std::variant<std::nullptr_t, bool, int64_t, double, std::string, Array, Object> value_;
};

// Nesting deeper than this is rejected, so a hostile file cannot overflow the stack.
inline constexpr int kMaxJsonDepth = 256;

// Parses one JSON value (surrounded by optional whitespace). Errors read
// "JSON error at byte <offset>: <what>", the offset counting from 0 in `text`.
absl::StatusOr<Json> parse_json(std::string_view text);

// Compact JSON: no whitespace, keys in stored order, doubles in shortest round-trip form.
std::string to_json(const Json& value);

}  // namespace sy
