#include "trainer/json.h"

#include <charconv>
#include <cmath>
#include <system_error>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace sy {

Json::Type Json::type() const {
  switch (value_.index()) {
    case 0:
      return Type::kNull;
    case 1:
      return Type::kBool;
    case 2:
    case 3:
      return Type::kNumber;
    case 4:
      return Type::kString;
    case 5:
      return Type::kArray;
    default:
      return Type::kObject;
  }
}

bool Json::as_bool() const {
  SY_CHECK(is_bool()) << "JSON value is not a bool";
  return std::get<bool>(value_);
}

int64_t Json::as_int() const {
  SY_CHECK(is_int()) << "JSON value is not an integer";
  return std::get<int64_t>(value_);
}

double Json::as_double() const {
  SY_CHECK(is_number()) << "JSON value is not a number";
  return is_int() ? static_cast<double>(std::get<int64_t>(value_)) : std::get<double>(value_);
}

const std::string& Json::as_string() const {
  SY_CHECK(is_string()) << "JSON value is not a string";
  return std::get<std::string>(value_);
}

const Json::Array& Json::as_array() const {
  SY_CHECK(is_array()) << "JSON value is not an array";
  return std::get<Array>(value_);
}

Json::Array& Json::as_array() {
  SY_CHECK(is_array()) << "JSON value is not an array";
  return std::get<Array>(value_);
}

const Json::Object& Json::as_object() const {
  SY_CHECK(is_object()) << "JSON value is not an object";
  return std::get<Object>(value_);
}

Json::Object& Json::as_object() {
  SY_CHECK(is_object()) << "JSON value is not an object";
  return std::get<Object>(value_);
}

const Json* Json::find(std::string_view key) const {
  for (const auto& [k, v] : as_object())
    if (k == key) return &v;
  return nullptr;
}

Json& Json::set(std::string_view key, Json value) {
  Object& object = as_object();
  for (auto& [k, v] : object) {
    if (k == key) {
      v = std::move(value);
      return v;
    }
  }
  object.emplace_back(std::string(key), std::move(value));
  return object.back().second;
}

namespace {

// Recursive descent over the text; every error carries the byte offset where it was noticed.
class Parser {
 public:
  explicit Parser(std::string_view text) : text_(text) {}

  absl::StatusOr<Json> parse_document() {
    skip_whitespace();
    SY_ASSIGN_OR_RETURN(Json value, parse_value(0));
    skip_whitespace();
    if (pos_ != text_.size()) return error("unexpected characters after the JSON value");
    return value;
  }

 private:
  absl::Status error(const std::string& what) const { return error_at(pos_, what); }
  absl::Status error_at(size_t offset, const std::string& what) const {
    return absl::InvalidArgumentError(absl::StrCat("JSON error at byte ", offset, ": ", what));
  }

  bool at_end() const { return pos_ >= text_.size(); }
  char peek() const { return text_[pos_]; }

  // A printable description of the byte at the cursor, for "expected X, found Y" messages.
  std::string found() const {
    if (at_end()) return "end of input";
    unsigned char c = static_cast<unsigned char>(peek());
    if (c >= 0x20 && c < 0x7f) return absl::StrCat("'", std::string(1, static_cast<char>(c)), "'");
    return absl::StrFormat("byte 0x%02x", c);
  }

  void skip_whitespace() {
    while (!at_end() && (peek() == ' ' || peek() == '\t' || peek() == '\n' || peek() == '\r'))
      ++pos_;
  }

  absl::StatusOr<Json> parse_value(int depth) {
    if (at_end()) return error("expected a value, found end of input");
    switch (peek()) {
      case '{':
        return parse_object(depth + 1);
      case '[':
        return parse_array(depth + 1);
      case '"': {
        SY_ASSIGN_OR_RETURN(std::string s, parse_string());
        return Json(std::move(s));
      }
      case 't':
        return parse_literal("true", Json(true));
      case 'f':
        return parse_literal("false", Json(false));
      case 'n':
        return parse_literal("null", Json());
      default:
        if (peek() == '-' || (peek() >= '0' && peek() <= '9')) return parse_number();
        return error(absl::StrCat("expected a value, found ", found()));
    }
  }

  absl::StatusOr<Json> parse_literal(std::string_view word, Json value) {
    if (text_.substr(pos_, word.size()) != word)
      return error(absl::StrCat("expected a value, found ", found()));
    pos_ += word.size();
    return value;
  }

  absl::Status check_depth(int depth) const {
    if (depth > kMaxJsonDepth)
      return error(absl::StrCat("nesting deeper than ", kMaxJsonDepth, " levels"));
    return absl::OkStatus();
  }

  absl::StatusOr<Json> parse_array(int depth) {
    SY_RETURN_IF_ERROR(check_depth(depth));
    ++pos_;  // '['
    Json::Array items;
    skip_whitespace();
    if (!at_end() && peek() == ']') {
      ++pos_;
      return Json(std::move(items));
    }
    while (true) {
      skip_whitespace();
      if (!at_end() && peek() == ']') return error("trailing comma before ']'");
      SY_ASSIGN_OR_RETURN(Json item, parse_value(depth));
      items.push_back(std::move(item));
      skip_whitespace();
      if (at_end()) return error("unterminated array: expected ',' or ']', found end of input");
      if (peek() == ']') {
        ++pos_;
        return Json(std::move(items));
      }
      if (peek() != ',') return error(absl::StrCat("expected ',' or ']', found ", found()));
      ++pos_;
    }
  }

  static constexpr size_t kLinearKeyScan = 32;

  absl::StatusOr<Json> parse_object(int depth) {
    SY_RETURN_IF_ERROR(check_depth(depth));
    ++pos_;  // '{'
    Json::Object members;
    absl::flat_hash_set<std::string> seen;
    skip_whitespace();
    if (!at_end() && peek() == '}') {
      ++pos_;
      return Json(std::move(members));
    }
    while (true) {
      skip_whitespace();
      if (!at_end() && peek() == '}') return error("trailing comma before '}'");
      if (at_end() || peek() != '"')
        return error(absl::StrCat("expected a string key, found ", found()));
      size_t key_offset = pos_;
      SY_ASSIGN_OR_RETURN(std::string key, parse_string());
      // A linear scan is quickest for the small objects of headers and manifests; a large one
      // (tokenizer.json's vocabulary: 150k keys) would make it quadratic, so past a few dozen
      // keys the check moves to a hash set.
      bool duplicate = false;
      if (members.size() < kLinearKeyScan) {
        for (const auto& member : members) duplicate = duplicate || member.first == key;
      } else {
        if (seen.empty())
          for (const auto& member : members) seen.insert(member.first);
        duplicate = !seen.insert(key).second;
      }
      if (duplicate) return error_at(key_offset, absl::StrCat("duplicate key \"", key, "\""));
      skip_whitespace();
      if (at_end() || peek() != ':') return error(absl::StrCat("expected ':', found ", found()));
      ++pos_;
      skip_whitespace();
      SY_ASSIGN_OR_RETURN(Json value, parse_value(depth));
      members.emplace_back(std::move(key), std::move(value));
      skip_whitespace();
      if (at_end()) return error("unterminated object: expected ',' or '}', found end of input");
      if (peek() == '}') {
        ++pos_;
        return Json(std::move(members));
      }
      if (peek() != ',') return error(absl::StrCat("expected ',' or '}', found ", found()));
      ++pos_;
    }
  }

  absl::StatusOr<uint32_t> parse_hex4() {
    if (text_.size() - pos_ < 4) return error("truncated \\u escape: expected 4 hex digits");
    uint32_t code = 0;
    for (int i = 0; i < 4; ++i) {
      char c = text_[pos_];
      uint32_t digit;
      if (c >= '0' && c <= '9') {
        digit = c - '0';
      } else if (c >= 'a' && c <= 'f') {
        digit = c - 'a' + 10;
      } else if (c >= 'A' && c <= 'F') {
        digit = c - 'A' + 10;
      } else {
        return error(absl::StrCat("bad \\u escape: expected a hex digit, found ", found()));
      }
      code = code * 16 + digit;
      ++pos_;
    }
    return code;
  }

  static void append_utf8(std::string& out, uint32_t code) {
    if (code < 0x80) {
      out += static_cast<char>(code);
    } else if (code < 0x800) {
      out += static_cast<char>(0xc0 | (code >> 6));
      out += static_cast<char>(0x80 | (code & 0x3f));
    } else if (code < 0x10000) {
      out += static_cast<char>(0xe0 | (code >> 12));
      out += static_cast<char>(0x80 | ((code >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (code & 0x3f));
    } else {
      out += static_cast<char>(0xf0 | (code >> 18));
      out += static_cast<char>(0x80 | ((code >> 12) & 0x3f));
      out += static_cast<char>(0x80 | ((code >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (code & 0x3f));
    }
  }

  // A \u escape: one code unit, or a surrogate pair that together name one code point.
  absl::Status parse_unicode_escape(std::string& out, size_t escape_offset) {
    SY_ASSIGN_OR_RETURN(uint32_t code, parse_hex4());
    if (code >= 0xdc00 && code <= 0xdfff)
      return error_at(escape_offset, "bad \\u escape: low surrogate without a high surrogate");
    if (code >= 0xd800 && code <= 0xdbff) {
      if (text_.substr(pos_, 2) != "\\u")
        return error_at(escape_offset, "bad \\u escape: high surrogate without a low surrogate");
      pos_ += 2;
      SY_ASSIGN_OR_RETURN(uint32_t low, parse_hex4());
      if (low < 0xdc00 || low > 0xdfff)
        return error_at(escape_offset, "bad \\u escape: high surrogate without a low surrogate");
      code = 0x10000 + ((code - 0xd800) << 10) + (low - 0xdc00);
    }
    append_utf8(out, code);
    return absl::OkStatus();
  }

  absl::StatusOr<std::string> parse_string() {
    size_t start = pos_;
    ++pos_;  // opening quote
    std::string out;
    while (true) {
      if (at_end()) return error_at(start, "unterminated string");
      char c = peek();
      if (c == '"') {
        ++pos_;
        return out;
      }
      if (static_cast<unsigned char>(c) < 0x20)
        return error(absl::StrFormat("control character 0x%02x in a string must be escaped",
                                     static_cast<unsigned char>(c)));
      if (c != '\\') {
        out += c;
        ++pos_;
        continue;
      }
      size_t escape_offset = pos_;
      ++pos_;
      if (at_end()) return error_at(start, "unterminated string");
      char e = peek();
      switch (e) {
        case '"':
          out += '"';
          break;
        case '\\':
          out += '\\';
          break;
        case '/':
          out += '/';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'u':
          ++pos_;
          SY_RETURN_IF_ERROR(parse_unicode_escape(out, escape_offset));
          continue;
        default:
          return error_at(escape_offset,
                          absl::StrCat("bad escape: backslash followed by ", found()));
      }
      ++pos_;
    }
  }

  // The JSON number grammar exactly (no leading '+', no leading zeros, no bare '.', no
  // hex, no NaN); from_chars then converts the validated span.
  absl::StatusOr<Json> parse_number() {
    size_t start = pos_;
    auto digits = [&] {
      size_t begin = pos_;
      while (!at_end() && peek() >= '0' && peek() <= '9') ++pos_;
      return pos_ - begin;
    };
    if (peek() == '-') ++pos_;
    if (at_end() || peek() < '0' || peek() > '9')
      return error(absl::StrCat("bad number: expected a digit, found ", found()));
    if (peek() == '0') {
      ++pos_;
      if (!at_end() && peek() >= '0' && peek() <= '9')
        return error("bad number: leading zeros are not allowed");
    } else {
      digits();
    }
    bool integer = true;
    if (!at_end() && peek() == '.') {
      integer = false;
      ++pos_;
      if (digits() == 0)
        return error(absl::StrCat("bad number: expected a digit after '.', found ", found()));
    }
    if (!at_end() && (peek() == 'e' || peek() == 'E')) {
      integer = false;
      ++pos_;
      if (!at_end() && (peek() == '+' || peek() == '-')) ++pos_;
      if (digits() == 0)
        return error(absl::StrCat("bad number: expected an exponent digit, found ", found()));
    }
    const char* first = text_.data() + start;
    const char* last = text_.data() + pos_;
    if (integer) {
      int64_t value;
      auto [ptr, ec] = std::from_chars(first, last, value);
      if (ec == std::errc() && ptr == last) return Json(value);
      // Too large for int64: fall through to double, as other parsers do.
    }
    double value;
    auto [ptr, ec] = std::from_chars(first, last, value);
    if (ec == std::errc::result_out_of_range)
      return error_at(start, "number out of the range of a double");
    SY_CHECK(ec == std::errc() && ptr == last) << "validated number did not convert";
    return Json(value);
  }

  std::string_view text_;
  size_t pos_ = 0;
};

void write_string(std::string& out, const std::string& s) {
  out += '"';
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += absl::StrFormat("\\u%04x", static_cast<unsigned char>(c));
        } else {
          out += c;
        }
    }
  }
  out += '"';
}

void write_value(std::string& out, const Json& value) {
  switch (value.type()) {
    case Json::Type::kNull:
      out += "null";
      return;
    case Json::Type::kBool:
      out += value.as_bool() ? "true" : "false";
      return;
    case Json::Type::kNumber: {
      if (value.is_int()) {
        absl::StrAppend(&out, value.as_int());
        return;
      }
      double d = value.as_double();
      if (!std::isfinite(d)) {
        out += "null";
        return;
      }
      char buffer[64];
      auto [ptr, ec] = std::to_chars(buffer, buffer + sizeof(buffer), d);
      SY_CHECK(ec == std::errc()) << "to_chars failed";
      std::string_view text(buffer, ptr - buffer);
      out += text;
      // Keep a double a double on the way back in: "2" would re-parse as an int64.
      if (text.find_first_of(".eE") == std::string_view::npos) out += ".0";
      return;
    }
    case Json::Type::kString:
      write_string(out, value.as_string());
      return;
    case Json::Type::kArray: {
      out += '[';
      bool first = true;
      for (const Json& item : value.as_array()) {
        if (!first) out += ',';
        first = false;
        write_value(out, item);
      }
      out += ']';
      return;
    }
    case Json::Type::kObject: {
      out += '{';
      bool first = true;
      for (const auto& [key, item] : value.as_object()) {
        if (!first) out += ',';
        first = false;
        write_string(out, key);
        out += ':';
        write_value(out, item);
      }
      out += '}';
      return;
    }
  }
}

}  // namespace

absl::StatusOr<Json> parse_json(std::string_view text) { return Parser(text).parse_document(); }

std::string to_json(const Json& value) {
  std::string out;
  write_value(out, value);
  return out;
}

}  // namespace sy
