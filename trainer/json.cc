#include "trainer/json.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <iterator>
#include <nlohmann/json.hpp>
#include <system_error>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
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

// nlohmann's lexer reads through this iterator, which counts the bytes handed over, so that
// the errors the builder raises itself (a duplicate key, too deep nesting) carry an offset.
// It hands a NUL byte on as 0x01: nlohmann takes NUL for the end of the input (C strings),
// which would accept "1\0anything" as 1; 0x01 is refused wherever a NUL is (a control
// character inside a string, no token outside one), and the messages name the real byte.
class CountingCursor {
 public:
  using iterator_category = std::input_iterator_tag;
  using value_type = char;
  using difference_type = std::ptrdiff_t;
  using pointer = const char*;
  using reference = char;

  CountingCursor() = default;
  CountingCursor(const char* at, size_t* consumed) : at_(at), consumed_(consumed) {}
  char operator*() const { return *at_ == '\0' ? '\x01' : *at_; }
  CountingCursor& operator++() {
    ++at_;
    ++*consumed_;
    return *this;
  }
  CountingCursor operator++(int) {
    CountingCursor before = *this;
    ++*this;
    return before;
  }
  bool operator==(const CountingCursor& other) const { return at_ == other.at_; }

 private:
  const char* at_ = nullptr;
  size_t* consumed_ = nullptr;
};

// Builds a Json from nlohmann's SAX events, adding what nlohmann leaves to its caller: int64
// integers (nlohmann hands out uint64 too), a duplicate-key error (its DOM keeps the last),
// the depth limit (it has none), and our error messages. nlohmann reports an error as the
// count of bytes its lexer consumed plus its own sentence ("syntax error while parsing value
// - invalid literal; last read: 'tru'"); this class turns that into the byte where the
// offending token starts and a reason in terms of the grammar ("expected ',' or ']'"), the
// form callers and their tests rely on. It recognises nlohmann's lexer errors by their text
// (CMake asks for 3.11); an unknown one keeps nlohmann's own words.
class JsonBuilder {
 public:
  using NlohmannJson = nlohmann::json;

  explicit JsonBuilder(std::string_view text) : text_(text) {}

  absl::StatusOr<Json> parse() {
    const bool ok =
        NlohmannJson::sax_parse(CountingCursor(text_.data(), &consumed_),
                                CountingCursor(text_.data() + text_.size(), nullptr), this);
    if (!ok) {
      SY_CHECK(!error_.ok()) << "the JSON parser stopped without saying why";
      return error_;
    }
    SY_CHECK(stack_.empty() && root_done_) << "the JSON parser finished inside a value";
    return std::move(root_);
  }

  // --- nlohmann's SAX interface ---
  bool null() { return add(Json(), consumed_); }
  bool boolean(bool value) { return add(Json(value), consumed_); }
  bool number_integer(NlohmannJson::number_integer_t value) {
    if (value == 0 && leading_zero()) return false;
    return add(Json(static_cast<int64_t>(value)), number_end());
  }
  bool number_unsigned(NlohmannJson::number_unsigned_t value) {
    if (value == 0 && leading_zero()) return false;
    // Past int64 a double, as other parsers do (and as a number with a fraction would be).
    if (!std::in_range<int64_t>(value)) return add(Json(static_cast<double>(value)), number_end());
    return add(Json(static_cast<int64_t>(value)), number_end());
  }
  bool number_float(NlohmannJson::number_float_t value, const std::string&) {
    return add(Json(static_cast<double>(value)), number_end());
  }
  bool string(std::string& value) { return add(Json(std::move(value)), consumed_); }
  bool binary(NlohmannJson::binary_t&) {
    SY_CHECK(false) << "binary values come only from binary formats, never from JSON text";
    return false;
  }
  bool start_object(size_t) { return open(Json(Json::Object{})); }
  bool start_array(size_t) { return open(Json(Json::Array{})); }
  bool end_object() { return close(); }
  bool end_array() { return close(); }

  bool key(std::string& name) {
    // The lexer has just read the key's closing quote.
    Frame& frame = stack_.back();
    const Json::Object& members = frame.value.as_object();
    // A linear scan is quickest for the small objects of headers and manifests; a large one
    // (tokenizer.json's vocabulary: 150k keys) would make it quadratic, so past a few dozen
    // keys the check moves to a hash set.
    bool duplicate = false;
    if (members.size() < kLinearKeyScan) {
      for (const auto& member : members) duplicate = duplicate || member.first == name;
    } else {
      if (frame.seen.empty())
        for (const auto& member : members) frame.seen.insert(member.first);
      duplicate = !frame.seen.insert(name).second;
    }
    if (duplicate)
      return fail(opening_quote(consumed_ - 1), absl::StrCat("duplicate key \"", name, "\""));
    frame.key = std::move(name);
    expect_colon_ = true;
    return true;
  }

  bool parse_error(size_t consumed, const std::string& token, const NlohmannJson::exception& e) {
    // The lexer stopped on the byte before `consumed` (text_.size() at the end of the input).
    const size_t at = std::min(consumed == 0 ? 0 : consumed - 1, text_.size());
    if (root_done_)
      return fail(skip_whitespace(root_end_), "unexpected characters after the JSON value");
    // Up to nlohmann's "; last read: '...'", which quotes the input and so could say anything.
    std::string what = e.what();
    what = what.substr(0, what.find("; last read: "));
    auto says = [&](const char* words) { return what.find(words) != std::string::npos; };
    // out_of_range.406: a number literal beyond a double; `token` is the literal.
    if (e.id == 406)
      return fail(number_start(consumed, token), "number out of the range of a double");
    // The lexer's own errors, by the message nlohmann gives each (its lexer.hpp).
    if (says("invalid string: missing closing quote"))
      return fail(opening_quote(at), "unterminated string");
    if (says("forbidden character after backslash")) {
      if (at == text_.size()) return fail(opening_quote(at), "unterminated string");
      return fail(at - 1, absl::StrCat("bad escape: backslash followed by ", found(at)));
    }
    if (says("must be followed by 4 hex digits"))
      return fail(at, absl::StrCat("bad \\u escape: expected a hex digit, found ", found(at)));
    if (says("surrogate U+D800..U+DBFF must be followed by"))
      return fail(high_surrogate_escape(at),
                  "bad \\u escape: high surrogate without a low surrogate");
    if (says("surrogate U+DC00..U+DFFF must follow"))
      return fail(at - 5, "bad \\u escape: low surrogate without a high surrogate");
    if (says("invalid string: control character"))
      return fail(at, absl::StrFormat("control character 0x%02x in a string must be escaped",
                                      static_cast<unsigned char>(text_[at])));
    if (says("ill-formed UTF-8 byte")) {
      if (at == text_.size()) return fail(opening_quote(at), "unterminated string");
      return fail(at, absl::StrCat("a string is not valid UTF-8 at ", found(at),
                                   " (JSON text must be UTF-8)"));
    }
    if (says("invalid number; expected digit after '-'"))
      return fail(at, absl::StrCat("bad number: expected a digit, found ", found(at)));
    if (says("invalid number; expected digit after '.'"))
      return fail(at, absl::StrCat("bad number: expected a digit after '.', found ", found(at)));
    if (says("invalid number; expected") && says("exponent"))
      return fail(at, absl::StrCat("bad number: expected an exponent digit, found ", found(at)));
    if (says("invalid literal")) return unexpected(literal_start(at));
    // A partial UTF-8 byte order mark (a whole one is skipped).
    if (says("invalid BOM")) return unexpected(0);
    // A well-formed token where the grammar wants another ("unexpected ']'").
    if (says("syntax error") && says("- unexpected "))
      return unexpected(token_start(consumed, at, token));
    // A message this code does not know (another nlohmann version): nlohmann's own words.
    const size_t colon = what.find(": ");
    return fail(at, colon == std::string::npos ? what : what.substr(colon + 2));
  }

 private:
  struct Frame {
    Json value;       // an Array or an Object
    std::string key;  // the key whose value comes next (objects)
    absl::flat_hash_set<std::string> seen;
  };
  static constexpr size_t kLinearKeyScan = 32;

  bool fail(size_t offset, const std::string& what) {
    error_ = absl::InvalidArgumentError(absl::StrCat("JSON error at byte ", offset, ": ", what));
    return false;
  }

  // `end`: where the value's text ends, for "unexpected characters after the JSON value".
  bool add(Json value, size_t end) {
    expect_colon_ = false;
    if (stack_.empty()) {
      root_ = std::move(value);
      root_done_ = true;
      root_end_ = end;
      return true;
    }
    Frame& frame = stack_.back();
    if (frame.value.is_array()) {
      frame.value.as_array().push_back(std::move(value));
    } else {
      frame.value.as_object().emplace_back(std::move(frame.key), std::move(value));
    }
    return true;
  }

  bool open(Json container) {
    // The lexer has just read the bracket.
    if (stack_.size() >= static_cast<size_t>(kMaxJsonDepth))
      return fail(consumed_ - 1, absl::StrCat("nesting deeper than ", kMaxJsonDepth, " levels"));
    expect_colon_ = false;
    stack_.push_back(Frame{std::move(container), {}, {}});
    return true;
  }

  bool close() {
    Json value = std::move(stack_.back().value);
    stack_.pop_back();
    return add(std::move(value), consumed_);
  }

  // A number's end: the lexer reads one byte past a number before it knows the number ended.
  size_t number_end() const { return consumed_ == 0 ? 0 : consumed_ - 1; }

  // nlohmann reads "012" as the number 0 followed by the number 12; JSON forbids the form.
  // A zero whose look-ahead byte is a digit is that case (any other number has a digit
  // before the zero, or is not an integer).
  bool leading_zero() {
    const size_t next = consumed_ - 1;
    if (consumed_ < 2 || next >= text_.size() || !absl::ascii_isdigit(text_[next]) ||
        text_[next - 1] != '0')
      return false;
    return !fail(next, "bad number: leading zeros are not allowed");
  }

  // A printable description of the byte at `offset`, for "expected X, found Y" messages.
  std::string found(size_t offset) const {
    if (offset >= text_.size()) return "end of input";
    unsigned char c = static_cast<unsigned char>(text_[offset]);
    if (c >= 0x20 && c < 0x7f) return absl::StrCat("'", std::string(1, static_cast<char>(c)), "'");
    return absl::StrFormat("byte 0x%02x", c);
  }

  static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

  size_t skip_whitespace(size_t offset) const {
    while (offset < text_.size() && is_space(text_[offset])) ++offset;
    return offset;
  }

  // The quote that opens the string holding the byte before `end`: the nearest '"' before it
  // that is not escaped (an escaped one has an odd run of backslashes before it). Outside a
  // string no backslash can stand before an opening quote.
  size_t opening_quote(size_t end) const {
    for (size_t i = std::min(end, text_.size()); i-- > 0;) {
      if (text_[i] != '"') continue;
      size_t backslashes = 0;
      while (backslashes < i && text_[i - 1 - backslashes] == '\\') ++backslashes;
      if (backslashes % 2 == 0) return i;
    }
    return 0;
  }

  // The \u escape of the high surrogate the lexer was reading when it stopped at `at`, which
  // is 6 to 11 bytes after it (the byte after its 4 digits, a backslash and a stray byte, or
  // the last digit of a second escape that is no low surrogate).
  size_t high_surrogate_escape(size_t at) const {
    for (size_t back = 6; back <= 11 && back <= at; ++back) {
      const size_t s = at - back;
      if (text_.substr(s, 2) != "\\u" || s + 6 > text_.size()) continue;
      unsigned code = 0;
      auto [ptr, ec] = std::from_chars(text_.data() + s + 2, text_.data() + s + 6, code, 16);
      if (ec == std::errc() && ptr == text_.data() + s + 6 && code >= 0xd800 && code <= 0xdbff)
        return s;
    }
    return at;
  }

  // `token` is the lexer's copy of a number literal, which ends where it stopped reading.
  static size_t number_start(size_t consumed, const std::string& token) {
    return consumed >= token.size() ? consumed - token.size() : 0;
  }

  // Where the literal (true, false, null) that went wrong at `at` starts: a proper prefix of
  // one of them ends right before `at`, or the stray byte is itself at `at`.
  size_t literal_start(size_t at) const {
    for (size_t length = 1; length <= 4 && length <= at; ++length) {
      const std::string_view prefix = text_.substr(at - length, length);
      for (std::string_view word : {"true", "false", "null"})
        if (length < word.size() && word.starts_with(prefix)) return at - length;
    }
    return at;
  }

  // Where the well-formed token that ends at `at` (the lexer read it whole) starts.
  size_t token_start(size_t consumed, size_t at, const std::string& token) const {
    if (at >= text_.size()) return text_.size();
    const char c = text_[at];
    if (c == '"') return opening_quote(at);
    if (absl::ascii_isdigit(c)) return number_start(consumed, token);
    for (std::string_view word : {"true", "false", "null"})
      if (at + 1 >= word.size() && text_.substr(at + 1 - word.size(), word.size()) == word)
        return at + 1 - word.size();
    return at;
  }

  // The grammar's complaint about the token at `start`, from what came before it.
  bool unexpected(size_t start) {
    const std::string what = found(start);
    size_t before = start;
    while (before > 0 && is_space(text_[before - 1])) --before;
    const char prev = before > 0 ? text_[before - 1] : '\0';
    const char next = start < text_.size() ? text_[start] : '\0';
    if (stack_.empty() || prev == '[' || prev == ':')
      return fail(start, absl::StrCat("expected a value, found ", what));
    const bool in_array = stack_.back().value.is_array();
    if (prev == ',' && in_array) {
      if (next == ']') return fail(start, "trailing comma before ']'");
      return fail(start, absl::StrCat("expected a value, found ", what));
    }
    if (prev == ',' || prev == '{') {
      if (prev == ',' && next == '}') return fail(start, "trailing comma before '}'");
      return fail(start, absl::StrCat("expected a string key, found ", what));
    }
    if (expect_colon_) return fail(start, absl::StrCat("expected ':', found ", what));
    const char* expected = in_array ? "',' or ']'" : "',' or '}'";
    if (start >= text_.size())
      return fail(start, absl::StrCat("unterminated ", in_array ? "array" : "object", ": expected ",
                                      expected, ", found end of input"));
    return fail(start, absl::StrCat("expected ", expected, ", found ", what));
  }

  std::string_view text_;
  size_t consumed_ = 0;  // bytes the lexer has taken from the text
  std::vector<Frame> stack_;
  Json root_;
  bool root_done_ = false;
  size_t root_end_ = 0;
  bool expect_colon_ = false;  // a key was read, its ':' not yet
  absl::Status error_;
};

// nlohmann's string escaping; bytes that are not UTF-8 are written as U+FFFD, so what
// to_json writes always reads back (a model's output can stop inside a character).
void write_string(std::string& out, const std::string& s) {
  out += nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
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
      // std::to_chars rather than nlohmann's Grisu2: both round-trip, but Grisu2 is not
      // always shortest (-16.301342 comes out as -16.301342000000002), and float values such
      // as `generate`'s log-probs hit those cases often.
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

absl::StatusOr<Json> parse_json(std::string_view text) { return JsonBuilder(text).parse(); }

std::string to_json(const Json& value) {
  std::string out;
  write_value(out, value);
  return out;
}

}  // namespace sy
