#include "rl/math_answer.h"

#include <cmath>
#include <cstdlib>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"

namespace sy {
namespace {

bool is_digit(char c) { return c >= '0' && c <= '9'; }

// The content of the last balanced \boxed{...}, if any.
std::optional<std::string> last_boxed(std::string_view text) {
  static constexpr std::string_view kBoxed = "\\boxed{";
  size_t at = text.rfind(kBoxed);
  while (at != std::string_view::npos) {
    size_t i = at + kBoxed.size();
    int depth = 1;
    size_t j = i;
    for (; j < text.size() && depth > 0; ++j) {
      if (text[j] == '{') ++depth;
      if (text[j] == '}') --depth;
    }
    if (depth == 0) return std::string(text.substr(i, j - 1 - i));
    if (at == 0) break;
    at = text.rfind(kBoxed, at - 1);
  }
  return std::nullopt;
}

// Length of the number starting at `i` (0 when none starts there).
size_t number_at(std::string_view s, size_t i) {
  size_t j = i;
  if (j < s.size() && s[j] == '-') ++j;
  if (j < s.size() && s[j] == '$') ++j;
  size_t digits = j;
  while (j < s.size() && is_digit(s[j])) ++j;
  if (j == digits) return 0;
  // Thousands groups: a comma then exactly three digits.
  while (j + 3 < s.size() && s[j] == ',' && is_digit(s[j + 1]) && is_digit(s[j + 2]) &&
         is_digit(s[j + 3]) && (j + 4 >= s.size() || !is_digit(s[j + 4])))
    j += 4;
  if (j + 1 < s.size() && s[j] == '.' && is_digit(s[j + 1])) {
    ++j;
    while (j < s.size() && is_digit(s[j])) ++j;
  }
  if (j + 1 < s.size() && s[j] == '/' && is_digit(s[j + 1])) {
    ++j;
    while (j < s.size() && is_digit(s[j])) ++j;
  }
  if (j < s.size() && s[j] == '%') ++j;
  return j - i;
}

std::optional<std::string> last_number(std::string_view text) {
  std::optional<std::string> last;
  size_t i = 0;
  while (i < text.size()) {
    // A '-' or '$' starts a number only when a digit follows; a digit inside a word
    // ("x2") still counts, as graders of GSM8K-style answers do.
    size_t n = (is_digit(text[i]) || text[i] == '-' || text[i] == '$') ? number_at(text, i) : 0;
    if (n == 0) {
      ++i;
      continue;
    }
    last = std::string(text.substr(i, n));
    i += n;
  }
  return last;
}

std::string strip_text_wrapper(std::string s) {
  static constexpr std::string_view kText = "\\text{";
  if (s.size() > kText.size() && s.compare(0, kText.size(), kText) == 0 && s.back() == '}')
    s = s.substr(kText.size(), s.size() - kText.size() - 1);
  return s;
}

std::string canonical_text(std::string_view answer) {
  std::string s = strip_text_wrapper(
      std::string(absl::StripAsciiWhitespace(absl::string_view(answer.data(), answer.size()))));
  std::string out;
  for (char c : s)
    if (!absl::ascii_isspace(static_cast<unsigned char>(c))) out.push_back(c);
  if (!out.empty() && out[0] == '$') out.erase(0, 1);
  return out;
}

std::optional<double> parse_plain(std::string_view s) {
  if (s.empty()) return std::nullopt;
  std::string digits;
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == ',') {
      // Only thousands separators: three digits after, a digit before.
      if (i == 0 || !is_digit(s[i - 1]) || i + 3 >= s.size() || !is_digit(s[i + 1]) ||
          !is_digit(s[i + 2]) || !is_digit(s[i + 3]))
        return std::nullopt;
      continue;
    }
    if (!is_digit(c) && c != '.' && c != '-' && c != '+') return std::nullopt;
    digits.push_back(c);
  }
  double v = 0;
  if (!absl::SimpleAtod(digits, &v) || !std::isfinite(v)) return std::nullopt;
  return v;
}

}  // namespace

std::optional<double> parse_number(std::string_view answer) {
  std::string s = canonical_text(answer);
  bool negative = false;
  if (!s.empty() && s[0] == '-') {
    negative = true;
    s.erase(0, 1);
    if (!s.empty() && s[0] == '$') s.erase(0, 1);
  }
  if (!s.empty() && s.back() == '%') s.pop_back();
  if (!s.empty() && s.back() == '.') s.pop_back();  // "42." at the end of a sentence
  std::optional<double> value;
  static constexpr std::string_view kFrac = "\\frac{";
  if (s.rfind(kFrac, 0) == 0) {
    size_t mid = s.find("}{");
    if (mid != std::string::npos && s.back() == '}') {
      auto num = parse_plain(s.substr(kFrac.size(), mid - kFrac.size()));
      auto den = parse_plain(s.substr(mid + 2, s.size() - mid - 3));
      if (num && den && *den != 0) value = *num / *den;
    }
  } else if (size_t slash = s.find('/'); slash != std::string::npos) {
    auto num = parse_plain(s.substr(0, slash));
    auto den = parse_plain(s.substr(slash + 1));
    if (num && den && *den != 0) value = *num / *den;
  } else {
    value = parse_plain(s);
  }
  if (value && negative) *value = -*value;
  return value;
}

std::optional<std::string> extract_final_answer(std::string_view text) {
  if (auto boxed = last_boxed(text)) return boxed;
  return last_number(text);
}

bool answers_match(std::string_view answer, std::string_view reference) {
  auto a = parse_number(answer), b = parse_number(reference);
  if (a && b) return std::fabs(*a - *b) <= 1e-6 * std::max({1.0, std::fabs(*a), std::fabs(*b)});
  std::string ca = canonical_text(answer), cb = canonical_text(reference);
  return !ca.empty() && ca == cb;
}

std::optional<std::string> reference_answer(std::string_view solution) {
  size_t at = solution.rfind("####");
  if (at != std::string_view::npos) {
    absl::string_view stripped = absl::StripAsciiWhitespace(
        absl::string_view(solution.data() + at + 4, solution.size() - at - 4));
    std::string_view tail(stripped.data(), stripped.size());
    if (auto boxed = last_boxed(tail)) return boxed;
    if (!tail.empty()) return std::string(tail);
    return std::nullopt;
  }
  return extract_final_answer(solution);
}

}  // namespace sy
