#include "trainer/data/bpe_tokenizer.h"

#include <unicode/normalizer2.h>
#include <unicode/regex.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>
#include <unicode/utext.h>
#include <unicode/utf8.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <queue>
#include <sstream>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "kernels/check.h"
#include "trainer/json.h"

namespace sy {
namespace {

// The hash maps look up by absl::string_view, which this abseil build keeps apart from
// std::string_view.
absl::string_view av(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// ---------------------------------------------------------------------------------------------
// Byte-level alphabet (GPT-2's bytes_to_unicode): printable Latin-1 bytes stand for themselves,
// the other 68 bytes for U+0100.. in byte order, so every byte has a visible, non-space char.
struct ByteAlphabet {
  std::string byte_to_utf8[256];
  absl::flat_hash_map<UChar32, uint8_t> char_to_byte;

  ByteAlphabet() {
    int next = 0;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
      UChar32 c = printable ? b : 256 + next++;
      char buf[4];
      int32_t len = 0;
      U8_APPEND_UNSAFE(buf, len, c);
      byte_to_utf8[b].assign(buf, len);
      char_to_byte[c] = static_cast<uint8_t>(b);
    }
  }
};

const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet* alphabet = new ByteAlphabet();
  return *alphabet;
}

// The position of the first invalid UTF-8 sequence, or -1.
int64_t invalid_utf8_at(std::string_view s) {
  int32_t i = 0;
  const int32_t n = static_cast<int32_t>(s.size());
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  while (i < n) {
    int32_t at = i;
    UChar32 c;
    U8_NEXT(p, i, n, c);
    if (c < 0) return at;
  }
  return -1;
}

// Bytes to text the way Rust's String::from_utf8_lossy does (and so `tokenizers`' byte-level
// decoder): each maximal prefix of an invalid sequence becomes one U+FFFD.
std::string utf8_lossy(std::string_view s) {
  static constexpr char kReplacement[] = "\xEF\xBF\xBD";
  std::string out;
  out.reserve(s.size());
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  size_t i = 0, n = s.size();
  while (i < n) {
    uint8_t b = p[i];
    if (b < 0x80) {
      out.push_back(static_cast<char>(b));
      ++i;
      continue;
    }
    int need = 0;
    uint8_t lo = 0x80, hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) {
      need = 1;
    } else if (b >= 0xE0 && b <= 0xEF) {
      need = 2;
      if (b == 0xE0) lo = 0xA0;
      if (b == 0xED) hi = 0x9F;
    } else if (b >= 0xF0 && b <= 0xF4) {
      need = 3;
      if (b == 0xF0) lo = 0x90;
      if (b == 0xF4) hi = 0x8F;
    } else {
      out += kReplacement;
      ++i;
      continue;
    }
    size_t j = i + 1;
    int have = 0;
    while (have < need && j < n) {
      uint8_t c = p[j];
      if (c < (have == 0 ? lo : 0x80) || c > (have == 0 ? hi : 0xBF)) break;
      ++j;
      ++have;
    }
    if (have == need)
      out.append(s.substr(i, j - i));
    else
      out += kReplacement;
    i = j;
  }
  return out;
}

bool is_whitespace_at(std::string_view s, size_t i, size_t* len) {
  int32_t pos = static_cast<int32_t>(i);
  UChar32 c;
  U8_NEXT(reinterpret_cast<const uint8_t*>(s.data()), pos, static_cast<int32_t>(s.size()), c);
  *len = pos - i;
  return c >= 0 && u_isUWhiteSpace(c);
}

// ---------------------------------------------------------------------------------------------
// tokenizer.json reading helpers: every error names the file and the JSON path.

class Reader {
 public:
  explicit Reader(std::string file) : file_(std::move(file)) {}

  absl::Status error(const std::string& path, const std::string& what) const {
    return absl::InvalidArgumentError(absl::StrCat(file_, ": ", path, ": ", what));
  }
  absl::Status unsupported(const std::string& path, const std::string& what) const {
    return absl::UnimplementedError(absl::StrCat(file_, ": ", path, ": ", what));
  }
  absl::StatusOr<const Json*> object(const Json& j, const std::string& path) const {
    if (!j.is_object()) return error(path, "expected an object");
    return &j;
  }
  // A member that may be absent or null: nullptr then.
  const Json* optional(const Json& obj, const std::string& key) const {
    const Json* v = obj.find(key);
    return (v == nullptr || v->is_null()) ? nullptr : v;
  }
  absl::StatusOr<std::string> string(const Json& obj, const std::string& key,
                                     const std::string& path) const {
    const Json* v = obj.find(key);
    if (v == nullptr || !v->is_string())
      return error(path, absl::StrCat("expected a string field \"", key, "\""));
    return v->as_string();
  }
  absl::StatusOr<bool> boolean(const Json& obj, const std::string& key, const std::string& path,
                               bool fallback) const {
    const Json* v = optional(obj, key);
    if (v == nullptr) return fallback;
    if (!v->is_bool()) return error(path, absl::StrCat("\"", key, "\" must be true or false"));
    return v->as_bool();
  }
  absl::StatusOr<int32_t> id(const Json& v, const std::string& path) const {
    if (!v.is_int() || v.as_int() < 0 || v.as_int() > INT32_MAX)
      return error(path, "expected a non-negative integer token id");
    return static_cast<int32_t>(v.as_int());
  }
  const std::string& file() const { return file_; }

 private:
  std::string file_;
};

absl::StatusOr<std::string> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream buf;
  buf << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("cannot read ", path));
  return std::move(buf).str();
}

// ---------------------------------------------------------------------------------------------
// Regexes: ICU over UTF-8 text, so match offsets are byte offsets.

struct Regex {
  std::unique_ptr<icu::RegexPattern> pattern;
};

absl::StatusOr<std::shared_ptr<Regex>> compile_regex(const std::string& pattern,
                                                     const Reader& reader,
                                                     const std::string& path) {
  UErrorCode status = U_ZERO_ERROR;
  UParseError parse_error;
  auto regex = std::make_shared<Regex>();
  regex->pattern.reset(
      icu::RegexPattern::compile(icu::UnicodeString::fromUTF8(pattern), 0, parse_error, status));
  if (U_FAILURE(status))
    return reader.error(path, absl::StrCat("regex does not compile (", u_errorName(status),
                                           " at offset ", parse_error.offset, "): ", pattern));
  return regex;
}

struct Span {
  size_t begin, end;
  bool is_match;
};

// The matched and unmatched stretches of `text`, in order, covering it.
std::vector<Span> find_matches(const Regex& regex, std::string_view text) {
  std::vector<Span> spans;
  if (text.empty()) return spans;
  UErrorCode status = U_ZERO_ERROR;
  UText* ut = utext_openUTF8(nullptr, text.data(), static_cast<int64_t>(text.size()), &status);
  SY_CHECK(U_SUCCESS(status)) << u_errorName(status);
  std::unique_ptr<icu::RegexMatcher> matcher(regex.pattern->matcher(status));
  SY_CHECK(U_SUCCESS(status)) << u_errorName(status);
  matcher->reset(ut);
  size_t prev = 0;
  while (matcher->find(status)) {
    SY_CHECK(U_SUCCESS(status)) << u_errorName(status);
    auto begin = static_cast<size_t>(matcher->start64(status));
    auto end = static_cast<size_t>(matcher->end64(status));
    if (begin > prev) spans.push_back({prev, begin, false});
    spans.push_back({begin, end, true});
    prev = end;
  }
  SY_CHECK(U_SUCCESS(status)) << u_errorName(status);
  if (prev < text.size()) spans.push_back({prev, text.size(), false});
  utext_close(ut);
  return spans;
}

std::vector<Span> find_literal(std::string_view needle, std::string_view text) {
  std::vector<Span> spans;
  size_t prev = 0;
  if (!needle.empty()) {
    for (size_t at = text.find(needle); at != std::string_view::npos;
         at = text.find(needle, prev)) {
      if (at > prev) spans.push_back({prev, at, false});
      spans.push_back({at, at + needle.size(), true});
      prev = at + needle.size();
    }
  }
  if (prev < text.size()) spans.push_back({prev, text.size(), false});
  return spans;
}

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// Pieces of `text` per `tokenizers`' SplitDelimiterBehavior; empty pieces are dropped.
void split_pieces(std::string_view text, std::vector<Span> spans, SplitBehavior behavior,
                  std::vector<std::string>* out) {
  std::vector<std::pair<size_t, size_t>> pieces;
  switch (behavior) {
    case SplitBehavior::kRemoved:
      for (const Span& s : spans)
        if (!s.is_match) pieces.emplace_back(s.begin, s.end);
      break;
    case SplitBehavior::kIsolated:
      for (const Span& s : spans) pieces.emplace_back(s.begin, s.end);
      break;
    case SplitBehavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const Span& s : spans) {
        if (s.is_match && !previous_match && !pieces.empty())
          pieces.back().second = s.end;
        else
          pieces.emplace_back(s.begin, s.end);
        previous_match = s.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool previous_match = false;
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->is_match && !previous_match && !pieces.empty())
          pieces.back().first = it->begin;
        else
          pieces.emplace_back(it->begin, it->end);
        previous_match = it->is_match;
      }
      std::reverse(pieces.begin(), pieces.end());
      break;
    }
    case SplitBehavior::kContiguous: {
      bool previous_match = false;
      for (const Span& s : spans) {
        if (s.is_match == previous_match && !pieces.empty())
          pieces.back().second = s.end;
        else
          pieces.emplace_back(s.begin, s.end);
        previous_match = s.is_match;
      }
      break;
    }
  }
  for (auto [b, e] : pieces)
    if (e > b) out->emplace_back(text.substr(b, e - b));
}

// GPT-2's pattern, which ByteLevel applies when use_regex is true.
constexpr char kGpt2Pattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// ---------------------------------------------------------------------------------------------

struct PreTokenizerStep {
  enum class Kind { kSplit, kByteLevel } kind;
  std::shared_ptr<Regex> regex;  // Split with a Regex pattern; ByteLevel with use_regex
  std::string literal;           // Split with a String pattern
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
  bool add_prefix_space = false;
};

struct AddedToken {
  std::string content;  // normalised already for normalized=true tokens
  int32_t id = 0;
  bool special = false, single_word = false, lstrip = false, rstrip = false, normalized = false;
};

// Added tokens matched leftmost-longest, as `tokenizers`' Aho-Corasick pass does.
class AddedTokenMatcher {
 public:
  void add(const AddedToken* token) {
    if (token->content.empty()) return;
    auto& list = by_first_byte_[static_cast<uint8_t>(token->content[0])];
    list.push_back(token);
    std::stable_sort(list.begin(), list.end(), [](const AddedToken* a, const AddedToken* b) {
      return a->content.size() > b->content.size();
    });
  }
  bool empty() const {
    return std::all_of(std::begin(by_first_byte_), std::end(by_first_byte_),
                       [](const auto& l) { return l.empty(); });
  }

  // Appends (piece, -1) for text and ("", id) for each token to `out`.
  void split(std::string_view text, std::vector<std::pair<std::string, int32_t>>* out) const {
    size_t offset = 0;  // start of the text not yet emitted
    size_t i = 0;
    while (i < text.size()) {
      const AddedToken* found = nullptr;
      for (const AddedToken* t : by_first_byte_[static_cast<uint8_t>(text[i])]) {
        if (text.compare(i, t->content.size(), t->content) == 0) {
          found = t;
          break;
        }
      }
      if (found == nullptr) {
        ++i;
        continue;
      }
      size_t start = i, stop = i + found->content.size();
      i = stop;
      if (found->single_word) {
        bool start_ok = start == 0 || !ends_with_word(text.substr(0, start));
        bool stop_ok = stop == text.size() || !starts_with_word(text.substr(stop));
        if (!start_ok || !stop_ok) continue;
      }
      if (found->lstrip) {
        size_t s = start;
        while (s > offset) {
          size_t back = s - 1;
          while (back > offset && (static_cast<uint8_t>(text[back]) & 0xC0) == 0x80) --back;
          size_t len;
          if (!is_whitespace_at(text, back, &len)) break;
          s = back;
        }
        start = s;
      }
      if (found->rstrip) {
        size_t len;
        while (stop < text.size() && is_whitespace_at(text, stop, &len)) stop += len;
        i = stop;
      }
      if (start > offset) out->emplace_back(std::string(text.substr(offset, start - offset)), -1);
      out->emplace_back(std::string(), found->id);
      offset = stop;
    }
    if (offset < text.size()) out->emplace_back(std::string(text.substr(offset)), -1);
  }

 private:
  static bool is_word_char(UChar32 c) { return c == '_' || u_isalnum(c); }
  static bool ends_with_word(std::string_view s) {
    int32_t i = static_cast<int32_t>(s.size());
    UChar32 c;
    U8_PREV(reinterpret_cast<const uint8_t*>(s.data()), 0, i, c);
    return c >= 0 && is_word_char(c);
  }
  static bool starts_with_word(std::string_view s) {
    int32_t i = 0;
    UChar32 c;
    U8_NEXT(reinterpret_cast<const uint8_t*>(s.data()), i, static_cast<int32_t>(s.size()), c);
    return c >= 0 && is_word_char(c);
  }
  std::vector<const AddedToken*> by_first_byte_[256];
};

class BpeTokenizer final : public Tokenizer {
 public:
  std::string kind() const override { return "bpe"; }
  int64_t vocab_size() const override { return static_cast<int64_t>(id_to_token_.size()); }
  const std::vector<int32_t>& eos_ids() const override { return eos_ids_; }

  std::optional<int32_t> token_to_id(std::string_view token) const override {
    for (const AddedToken& t : added_)
      if (t.content == token) return t.id;
    auto it = vocab_.find(av(token));
    if (it == vocab_.end()) return std::nullopt;
    return it->second;
  }

  absl::StatusOr<std::vector<int32_t>> encode(std::string_view text,
                                              bool add_special_tokens) const override {
    if (int64_t at = invalid_utf8_at(text); at >= 0)
      return absl::InvalidArgumentError(
          absl::StrCat("text to encode is not valid UTF-8 (byte ", at, ")"));
    std::vector<int32_t> ids;
    if (add_special_tokens) ids = prefix_ids_;

    std::vector<std::pair<std::string, int32_t>> raw;
    raw_matcher_.split(text, &raw);
    for (auto& [piece, id] : raw) {
      if (id >= 0) {
        ids.push_back(id);
        continue;
      }
      std::string normalized = normalize(piece);
      std::vector<std::pair<std::string, int32_t>> parts;
      normalized_matcher_.split(normalized, &parts);
      for (auto& [part, part_id] : parts) {
        if (part_id >= 0) {
          ids.push_back(part_id);
          continue;
        }
        for (const std::string& word : pre_tokenize(part)) SY_RETURN_IF_ERROR(bpe(word, &ids));
      }
    }
    if (add_special_tokens) ids.insert(ids.end(), suffix_ids_.begin(), suffix_ids_.end());
    return ids;
  }

  absl::StatusOr<std::string> decode(std::span<const int32_t> ids,
                                     bool skip_special_tokens) const override {
    std::string bytes;
    bool first = true;
    for (size_t i = 0; i < ids.size(); ++i) {
      int32_t id = ids[i];
      if (id < 0 || id >= vocab_size() || !has_token_[id])
        return absl::InvalidArgumentError(absl::StrCat("token ", id, " at position ", i,
                                                       " is not in the vocabulary of ",
                                                       vocab_size(), " tokens"));
      if (skip_special_tokens && is_special_[id]) continue;
      const std::string& token = id_to_token_[id];
      if (!byte_level_decoder_) {
        // No decoder: `tokenizers` joins the tokens with spaces.
        if (!first) bytes.push_back(' ');
        bytes += token;
        first = false;
        continue;
      }
      append_token_bytes(token, &bytes);
    }
    return byte_level_decoder_ ? utf8_lossy(bytes) : bytes;
  }

  // The state below is filled by the parse_* functions of this file and read-only afterwards
  // (the word cache aside).
  std::string normalize(const std::string& text) const {
    if (normalizers_.empty()) return text;
    icu::UnicodeString u = icu::UnicodeString::fromUTF8(text);
    for (const icu::Normalizer2* n : normalizers_) {
      UErrorCode status = U_ZERO_ERROR;
      u = n->normalize(u, status);
      SY_CHECK(U_SUCCESS(status)) << u_errorName(status);
    }
    std::string out;
    u.toUTF8String(out);
    return out;
  }

  std::vector<std::string> pre_tokenize(const std::string& text) const {
    std::vector<std::string> pieces{text};
    for (const PreTokenizerStep& step : pre_tokenizer_) {
      std::vector<std::string> next;
      for (std::string& piece : pieces) {
        if (step.kind == PreTokenizerStep::Kind::kSplit) {
          std::vector<Span> spans =
              step.regex ? find_matches(*step.regex, piece) : find_literal(step.literal, piece);
          if (step.invert)
            for (Span& s : spans) s.is_match = !s.is_match;
          split_pieces(piece, std::move(spans), step.behavior, &next);
          continue;
        }
        if (step.add_prefix_space && (piece.empty() || piece[0] != ' ')) piece = " " + piece;
        std::vector<std::string> words;
        if (step.regex)
          split_pieces(piece, find_matches(*step.regex, piece), SplitBehavior::kIsolated, &words);
        else if (!piece.empty())
          words.push_back(piece);
        const ByteAlphabet& alphabet = byte_alphabet();
        for (const std::string& w : words) {
          std::string mapped;
          mapped.reserve(w.size() * 2);
          for (char c : w) mapped += alphabet.byte_to_utf8[static_cast<uint8_t>(c)];
          next.push_back(std::move(mapped));
        }
      }
      pieces = std::move(next);
    }
    std::erase_if(pieces, [](const std::string& p) { return p.empty(); });
    return pieces;
  }

  absl::Status bpe(const std::string& word, std::vector<int32_t>* ids) const {
    if (ignore_merges_) {
      if (auto it = vocab_.find(word); it != vocab_.end()) {
        ids->push_back(it->second);
        return absl::OkStatus();
      }
    }
    {
      absl::MutexLock lock(&cache_mutex_);
      if (auto it = cache_.find(word); it != cache_.end()) {
        ids->insert(ids->end(), it->second.begin(), it->second.end());
        return absl::OkStatus();
      }
    }
    // Symbols as a linked list; merges applied lowest rank first, leftmost among equals, as
    // `tokenizers`' Word::merge_all does.
    struct Symbol {
      int32_t id;
      int prev, next;
      bool alive;
    };
    std::vector<Symbol> symbols;
    const auto* p = reinterpret_cast<const uint8_t*>(word.data());
    int32_t i = 0, n = static_cast<int32_t>(word.size());
    bool unk_run = false;
    while (i < n) {
      int32_t start = i;
      UChar32 c;
      U8_NEXT(p, i, n, c);
      auto it = vocab_.find(av(std::string_view(word).substr(start, i - start)));
      int32_t id;
      if (it != vocab_.end()) {
        id = it->second;
        unk_run = false;
      } else if (unk_id_ >= 0) {
        if (fuse_unk_ && unk_run) continue;
        id = unk_id_;
        unk_run = true;
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat("the character \"", word.substr(start, i - start),
                         "\" is not in the tokenizer's vocabulary and it has no unk_token"));
      }
      int idx = static_cast<int>(symbols.size());
      symbols.push_back({id, idx - 1, idx + 1, true});
    }
    if (!symbols.empty()) symbols.back().next = -1;

    struct Candidate {
      int32_t rank;
      int pos;
      int32_t new_id;
      bool operator>(const Candidate& o) const {
        return rank != o.rank ? rank > o.rank : pos > o.pos;
      }
    };
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
    auto push = [&](int pos) {
      int next = symbols[pos].next;
      if (next < 0) return;
      auto it = merges_.find(pair_key(symbols[pos].id, symbols[next].id));
      if (it != merges_.end()) queue.push({it->second.first, pos, it->second.second});
    };
    for (int k = 0; k + 1 < static_cast<int>(symbols.size()); ++k) push(k);
    while (!queue.empty()) {
      Candidate top = queue.top();
      queue.pop();
      Symbol& left = symbols[top.pos];
      if (!left.alive || left.next < 0) continue;
      Symbol& right = symbols[left.next];
      auto it = merges_.find(pair_key(left.id, right.id));
      if (it == merges_.end() || it->second.second != top.new_id) continue;
      left.id = top.new_id;
      right.alive = false;
      left.next = right.next;
      if (left.next >= 0) symbols[left.next].prev = top.pos;
      if (left.prev >= 0) push(left.prev);
      push(top.pos);
    }
    std::vector<int32_t> result;
    for (const Symbol& s : symbols)
      if (s.alive) result.push_back(s.id);
    ids->insert(ids->end(), result.begin(), result.end());
    absl::MutexLock lock(&cache_mutex_);
    if (cache_.size() < kCacheWords) cache_.emplace(word, std::move(result));
    return absl::OkStatus();
  }

  void append_token_bytes(const std::string& token, std::string* bytes) const {
    const ByteAlphabet& alphabet = byte_alphabet();
    size_t mark = bytes->size();
    const auto* p = reinterpret_cast<const uint8_t*>(token.data());
    int32_t i = 0, n = static_cast<int32_t>(token.size());
    while (i < n) {
      UChar32 c;
      U8_NEXT(p, i, n, c);
      auto it = alphabet.char_to_byte.find(c);
      if (it == alphabet.char_to_byte.end()) {
        // Not byte-level (an added token such as "<|im_start|>" written in other scripts):
        // its own UTF-8, as the ByteLevel decoder does.
        bytes->resize(mark);
        *bytes += token;
        return;
      }
      bytes->push_back(static_cast<char>(it->second));
    }
  }

  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  // Words whose merges are remembered: enough for a corpus's common words, bounded so a long
  // `data` run does not grow without limit.
  static constexpr size_t kCacheWords = 1 << 18;

  std::vector<const icu::Normalizer2*> normalizers_;
  std::vector<PreTokenizerStep> pre_tokenizer_;
  absl::flat_hash_map<std::string, int32_t> vocab_;
  absl::flat_hash_map<uint64_t, std::pair<int32_t, int32_t>> merges_;  // -> (rank, merged id)
  bool ignore_merges_ = false;
  int32_t unk_id_ = -1;
  bool fuse_unk_ = false;
  std::vector<AddedToken> added_;
  AddedTokenMatcher raw_matcher_, normalized_matcher_;
  std::vector<int32_t> prefix_ids_, suffix_ids_;
  bool byte_level_decoder_ = false;
  std::vector<std::string> id_to_token_;
  std::vector<bool> has_token_, is_special_;
  std::vector<int32_t> eos_ids_;

  mutable absl::Mutex cache_mutex_;
  mutable absl::flat_hash_map<std::string, std::vector<int32_t>> cache_;
};

absl::Status parse_normalizer(const Json& j, const std::string& path, const Reader& reader,
                              std::vector<const icu::Normalizer2*>* out) {
  if (j.is_null()) return absl::OkStatus();
  SY_RETURN_IF_ERROR(reader.object(j, path).status());
  SY_ASSIGN_OR_RETURN(std::string type, reader.string(j, "type", path));
  if (type == "Sequence") {
    const Json* list = j.find("normalizers");
    if (list == nullptr || !list->is_array())
      return reader.error(path, "a Sequence normalizer needs a \"normalizers\" list");
    for (size_t i = 0; i < list->as_array().size(); ++i)
      SY_RETURN_IF_ERROR(parse_normalizer(
          list->as_array()[i], absl::StrCat(path, ".normalizers[", i, "]"), reader, out));
    return absl::OkStatus();
  }
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* n = nullptr;
  if (type == "NFC")
    n = icu::Normalizer2::getNFCInstance(status);
  else if (type == "NFD")
    n = icu::Normalizer2::getNFDInstance(status);
  else if (type == "NFKC")
    n = icu::Normalizer2::getNFKCInstance(status);
  else if (type == "NFKD")
    n = icu::Normalizer2::getNFKDInstance(status);
  else
    return reader.unsupported(
        path, absl::StrCat("normalizer type \"", type,
                           "\" is not supported (supported: NFC, NFD, NFKC, NFKD, Sequence)"));
  SY_CHECK(U_SUCCESS(status)) << u_errorName(status);
  out->push_back(n);
  return absl::OkStatus();
}

absl::Status parse_pre_tokenizer(const Json& j, const std::string& path, const Reader& reader,
                                 std::vector<PreTokenizerStep>* out) {
  if (j.is_null()) return absl::OkStatus();
  SY_RETURN_IF_ERROR(reader.object(j, path).status());
  SY_ASSIGN_OR_RETURN(std::string type, reader.string(j, "type", path));
  if (type == "Sequence") {
    const Json* list = j.find("pretokenizers");
    if (list == nullptr || !list->is_array())
      return reader.error(path, "a Sequence pre_tokenizer needs a \"pretokenizers\" list");
    for (size_t i = 0; i < list->as_array().size(); ++i)
      SY_RETURN_IF_ERROR(parse_pre_tokenizer(
          list->as_array()[i], absl::StrCat(path, ".pretokenizers[", i, "]"), reader, out));
    return absl::OkStatus();
  }
  PreTokenizerStep step;
  if (type == "ByteLevel") {
    step.kind = PreTokenizerStep::Kind::kByteLevel;
    SY_ASSIGN_OR_RETURN(step.add_prefix_space, reader.boolean(j, "add_prefix_space", path, true));
    SY_ASSIGN_OR_RETURN(bool use_regex, reader.boolean(j, "use_regex", path, true));
    if (use_regex) {
      static const std::shared_ptr<Regex> gpt2 = *compile_regex(kGpt2Pattern, reader, path);
      step.regex = gpt2;
    }
  } else if (type == "Split") {
    step.kind = PreTokenizerStep::Kind::kSplit;
    const Json* pattern = j.find("pattern");
    if (pattern == nullptr || !pattern->is_object())
      return reader.error(path, "a Split pre_tokenizer needs a \"pattern\" object");
    if (const Json* re = pattern->find("Regex"); re != nullptr && re->is_string()) {
      SY_ASSIGN_OR_RETURN(step.regex,
                          compile_regex(re->as_string(), reader, absl::StrCat(path, ".pattern")));
    } else if (const Json* s = pattern->find("String"); s != nullptr && s->is_string()) {
      step.literal = s->as_string();
    } else {
      return reader.error(absl::StrCat(path, ".pattern"),
                          "expected {\"Regex\": ...} or {\"String\": ...}");
    }
    SY_ASSIGN_OR_RETURN(std::string behavior, reader.string(j, "behavior", path));
    if (behavior == "Removed")
      step.behavior = SplitBehavior::kRemoved;
    else if (behavior == "Isolated")
      step.behavior = SplitBehavior::kIsolated;
    else if (behavior == "MergedWithPrevious")
      step.behavior = SplitBehavior::kMergedWithPrevious;
    else if (behavior == "MergedWithNext")
      step.behavior = SplitBehavior::kMergedWithNext;
    else if (behavior == "Contiguous")
      step.behavior = SplitBehavior::kContiguous;
    else
      return reader.error(path, absl::StrCat("unknown Split behavior \"", behavior, "\""));
    SY_ASSIGN_OR_RETURN(step.invert, reader.boolean(j, "invert", path, false));
  } else {
    return reader.unsupported(
        path, absl::StrCat("pre_tokenizer type \"", type,
                           "\" is not supported (supported: ByteLevel, Split, Sequence)"));
  }
  out->push_back(std::move(step));
  return absl::OkStatus();
}

// Appends what a post-processor adds around one sequence.
absl::Status parse_post_processor(const Json& j, const std::string& path, const Reader& reader,
                                  std::vector<int32_t>* prefix, std::vector<int32_t>* suffix) {
  if (j.is_null()) return absl::OkStatus();
  SY_RETURN_IF_ERROR(reader.object(j, path).status());
  SY_ASSIGN_OR_RETURN(std::string type, reader.string(j, "type", path));
  if (type == "ByteLevel") return absl::OkStatus();  // offsets only
  if (type == "Sequence") {
    const Json* list = j.find("processors");
    if (list == nullptr || !list->is_array())
      return reader.error(path, "a Sequence post_processor needs a \"processors\" list");
    for (size_t i = 0; i < list->as_array().size(); ++i)
      SY_RETURN_IF_ERROR(parse_post_processor(
          list->as_array()[i], absl::StrCat(path, ".processors[", i, "]"), reader, prefix, suffix));
    return absl::OkStatus();
  }
  if (type != "TemplateProcessing")
    return reader.unsupported(
        path, absl::StrCat("post_processor type \"", type,
                           "\" is not supported (supported: ByteLevel, TemplateProcessing, "
                           "Sequence)"));
  const Json* single = j.find("single");
  const Json* specials = j.find("special_tokens");
  if (single == nullptr || !single->is_array())
    return reader.error(path, "TemplateProcessing needs a \"single\" list");
  bool seen_sequence = false;
  for (size_t i = 0; i < single->as_array().size(); ++i) {
    std::string item_path = absl::StrCat(path, ".single[", i, "]");
    const Json& item = single->as_array()[i];
    if (!item.is_object()) return reader.error(item_path, "expected an object");
    if (item.find("Sequence") != nullptr) {
      if (seen_sequence) return reader.error(item_path, "more than one Sequence in \"single\"");
      seen_sequence = true;
      continue;
    }
    const Json* special = item.find("SpecialToken");
    if (special == nullptr || !special->is_object())
      return reader.error(item_path, "expected {\"Sequence\": ...} or {\"SpecialToken\": ...}");
    SY_ASSIGN_OR_RETURN(std::string name, reader.string(*special, "id", item_path));
    const Json* entry =
        (specials != nullptr && specials->is_object()) ? specials->find(name) : nullptr;
    const Json* ids = entry != nullptr && entry->is_object() ? entry->find("ids") : nullptr;
    if (ids == nullptr || !ids->is_array())
      return reader.error(path, absl::StrCat("special_tokens has no \"ids\" for \"", name, "\""));
    for (const Json& id : ids->as_array()) {
      SY_ASSIGN_OR_RETURN(int32_t value,
                          reader.id(id, absl::StrCat(path, ".special_tokens.", name, ".ids")));
      (seen_sequence ? suffix : prefix)->push_back(value);
    }
  }
  if (!seen_sequence) return reader.error(path, "\"single\" has no Sequence");
  return absl::OkStatus();
}

absl::Status parse_decoder(const Json& j, const std::string& path, const Reader& reader,
                           bool* byte_level) {
  if (j.is_null()) return absl::OkStatus();
  SY_RETURN_IF_ERROR(reader.object(j, path).status());
  SY_ASSIGN_OR_RETURN(std::string type, reader.string(j, "type", path));
  if (type == "ByteLevel") {
    *byte_level = true;
    return absl::OkStatus();
  }
  if (type == "Sequence") {
    const Json* list = j.find("decoders");
    if (list == nullptr || !list->is_array())
      return reader.error(path, "a Sequence decoder needs a \"decoders\" list");
    for (size_t i = 0; i < list->as_array().size(); ++i)
      SY_RETURN_IF_ERROR(parse_decoder(
          list->as_array()[i], absl::StrCat(path, ".decoders[", i, "]"), reader, byte_level));
    return absl::OkStatus();
  }
  return reader.unsupported(path, absl::StrCat("decoder type \"", type,
                                               "\" is not supported (supported: ByteLevel, "
                                               "Sequence)"));
}

absl::Status parse_model(const Json& j, const Reader& reader, BpeTokenizer* t) {
  const std::string path = "model";
  SY_RETURN_IF_ERROR(reader.object(j, path).status());
  const Json* type = j.find("type");
  // Files written by old versions of `tokenizers` leave the type out of a BPE model.
  std::string type_name = type != nullptr && type->is_string() ? type->as_string() : "BPE";
  if (type_name != "BPE")
    return reader.unsupported(
        path, absl::StrCat("model type \"", type_name, "\" is not supported (supported: BPE)"));
  if (reader.optional(j, "dropout") != nullptr)
    return reader.unsupported(path, "BPE dropout is not supported: set \"dropout\" to null");
  SY_ASSIGN_OR_RETURN(bool byte_fallback, reader.boolean(j, "byte_fallback", path, false));
  if (byte_fallback)
    return reader.unsupported(path, "byte_fallback BPE (SentencePiece-style) is not supported");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (const Json* v = reader.optional(j, key);
        v != nullptr && !(v->is_string() && v->as_string().empty()))
      return reader.unsupported(path, absl::StrCat("\"", key, "\" is not supported"));
  SY_ASSIGN_OR_RETURN(t->ignore_merges_, reader.boolean(j, "ignore_merges", path, false));
  SY_ASSIGN_OR_RETURN(t->fuse_unk_, reader.boolean(j, "fuse_unk", path, false));

  const Json* vocab = j.find("vocab");
  if (vocab == nullptr || !vocab->is_object())
    return reader.error(path, "expected a \"vocab\" object of token -> id");
  t->vocab_.reserve(vocab->as_object().size());
  for (const auto& [token, id_json] : vocab->as_object()) {
    SY_ASSIGN_OR_RETURN(int32_t id, reader.id(id_json, absl::StrCat("model.vocab.", token)));
    t->vocab_.emplace(token, id);
  }
  if (const Json* unk = reader.optional(j, "unk_token")) {
    if (!unk->is_string()) return reader.error(path, "\"unk_token\" must be a string");
    auto it = t->vocab_.find(unk->as_string());
    if (it == t->vocab_.end())
      return reader.error(
          path, absl::StrCat("unk_token \"", unk->as_string(), "\" is not in the vocabulary"));
    t->unk_id_ = it->second;
  }

  const Json* merges = j.find("merges");
  if (merges == nullptr || !merges->is_array())
    return reader.error(path, "expected a \"merges\" list");
  const auto& list = merges->as_array();
  t->merges_.reserve(list.size());
  std::string joined;
  for (size_t rank = 0; rank < list.size(); ++rank) {
    const Json& m = list[rank];
    std::string_view a, b;
    if (m.is_string()) {
      std::string_view s = m.as_string();
      size_t space = s.find(' ');
      if (space == std::string_view::npos || s.find(' ', space + 1) != std::string_view::npos)
        return reader.error(
            absl::StrCat("model.merges[", rank, "]"),
            absl::StrCat("\"", std::string(s), "\" is not two tokens separated by a space"));
      a = s.substr(0, space);
      b = s.substr(space + 1);
    } else if (m.is_array() && m.as_array().size() == 2 && m.as_array()[0].is_string() &&
               m.as_array()[1].is_string()) {
      a = m.as_array()[0].as_string();
      b = m.as_array()[1].as_string();
    } else {
      return reader.error(absl::StrCat("model.merges[", rank, "]"),
                          "expected \"a b\" or [\"a\", \"b\"]");
    }
    auto ia = t->vocab_.find(av(a)), ib = t->vocab_.find(av(b));
    joined.assign(a);
    joined.append(b);
    auto ij = t->vocab_.find(joined);
    if (ia == t->vocab_.end() || ib == t->vocab_.end() || ij == t->vocab_.end())
      return reader.error(absl::StrCat("model.merges[", rank, "]"),
                          absl::StrCat("merge \"", std::string(a), "\" + \"", std::string(b),
                                       "\" uses or makes a token ", "that is not in model.vocab"));
    // A repeated pair keeps its first (best) rank.
    t->merges_.try_emplace(BpeTokenizer::pair_key(ia->second, ib->second),
                           static_cast<int32_t>(rank), ij->second);
  }
  return absl::OkStatus();
}

// The eos ids: generation_config.json's eos_token_id, else tokenizer_config.json's eos_token.
absl::Status find_eos(const std::string& dir, const BpeTokenizer& t, std::vector<int32_t>* eos) {
  namespace fs = std::filesystem;
  std::string gen_path = (fs::path(dir) / "generation_config.json").string();
  if (fs::exists(gen_path)) {
    SY_ASSIGN_OR_RETURN(std::string text, read_file(gen_path));
    auto json = parse_json(text);
    if (!json.ok())
      return absl::InvalidArgumentError(absl::StrCat(gen_path, ": ", json.status().message()));
    Reader reader(gen_path);
    if (json->is_object()) {
      if (const Json* v = reader.optional(*json, "eos_token_id")) {
        if (v->is_array()) {
          for (size_t i = 0; i < v->as_array().size(); ++i) {
            SY_ASSIGN_OR_RETURN(int32_t id,
                                reader.id(v->as_array()[i], absl::StrCat("eos_token_id[", i, "]")));
            eos->push_back(id);
          }
        } else {
          SY_ASSIGN_OR_RETURN(int32_t id, reader.id(*v, "eos_token_id"));
          eos->push_back(id);
        }
        for (int32_t id : *eos)
          if (id >= t.vocab_size())
            return reader.error(
                "eos_token_id",
                absl::StrCat(id, " is outside the tokenizer's vocabulary of ", t.vocab_size()));
        return absl::OkStatus();
      }
    }
  }
  std::string cfg_path = (fs::path(dir) / "tokenizer_config.json").string();
  if (fs::exists(cfg_path)) {
    SY_ASSIGN_OR_RETURN(std::string text, read_file(cfg_path));
    auto json = parse_json(text);
    if (!json.ok())
      return absl::InvalidArgumentError(absl::StrCat(cfg_path, ": ", json.status().message()));
    Reader reader(cfg_path);
    if (json->is_object()) {
      if (const Json* v = reader.optional(*json, "eos_token")) {
        // A string, or an AddedToken written as {"content": ...}.
        const Json* content = v->is_object() ? v->find("content") : v;
        if (content == nullptr || !content->is_string())
          return reader.error("eos_token", "expected a string or {\"content\": string}");
        std::optional<int32_t> id = t.token_to_id(content->as_string());
        if (!id)
          return reader.error("eos_token", absl::StrCat("\"", content->as_string(),
                                                        "\" is not a token of tokenizer.json"));
        eos->push_back(*id);
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Tokenizer>> parse_tokenizer(const std::string& dir, const Json& root,
                                                           const Reader& reader) {
  if (!root.is_object()) return reader.error("(top level)", "expected an object");
  auto t = std::make_unique<BpeTokenizer>();
  const Json* model = root.find("model");
  if (model == nullptr) return reader.error("model", "missing");
  SY_RETURN_IF_ERROR(parse_model(*model, reader, t.get()));
  static const Json kNull;
  auto member = [&](const std::string& key) -> const Json& {
    const Json* v = root.find(key);
    return v == nullptr ? kNull : *v;
  };
  SY_RETURN_IF_ERROR(
      parse_normalizer(member("normalizer"), "normalizer", reader, &t->normalizers_));
  SY_RETURN_IF_ERROR(
      parse_pre_tokenizer(member("pre_tokenizer"), "pre_tokenizer", reader, &t->pre_tokenizer_));
  SY_RETURN_IF_ERROR(parse_post_processor(member("post_processor"), "post_processor", reader,
                                          &t->prefix_ids_, &t->suffix_ids_));
  SY_RETURN_IF_ERROR(parse_decoder(member("decoder"), "decoder", reader, &t->byte_level_decoder_));

  if (const Json& added = member("added_tokens"); !added.is_null()) {
    if (!added.is_array()) return reader.error("added_tokens", "expected a list");
    for (size_t i = 0; i < added.as_array().size(); ++i) {
      std::string path = absl::StrCat("added_tokens[", i, "]");
      const Json& a = added.as_array()[i];
      SY_RETURN_IF_ERROR(reader.object(a, path).status());
      AddedToken token;
      const Json* id = a.find("id");
      if (id == nullptr) return reader.error(path, "missing \"id\"");
      SY_ASSIGN_OR_RETURN(token.id, reader.id(*id, path));
      SY_ASSIGN_OR_RETURN(token.content, reader.string(a, "content", path));
      if (token.content.empty()) return reader.error(path, "empty \"content\"");
      SY_ASSIGN_OR_RETURN(token.special, reader.boolean(a, "special", path, false));
      SY_ASSIGN_OR_RETURN(token.single_word, reader.boolean(a, "single_word", path, false));
      SY_ASSIGN_OR_RETURN(token.lstrip, reader.boolean(a, "lstrip", path, false));
      SY_ASSIGN_OR_RETURN(token.rstrip, reader.boolean(a, "rstrip", path, false));
      SY_ASSIGN_OR_RETURN(token.normalized, reader.boolean(a, "normalized", path, !token.special));
      // `tokenizers` does not read these ids back: it gives an added token its vocabulary id,
      // or the next id after the vocabulary and the added tokens before it. A file whose ids
      // disagree was edited by hand, and which ids the model saw is anyone's guess.
      int32_t assigned;
      if (auto it = t->vocab_.find(av(token.content)); it != t->vocab_.end()) {
        assigned = it->second;
      } else {
        assigned = static_cast<int32_t>(t->vocab_.size());
        for (const AddedToken& before : t->added_)
          if (!t->vocab_.contains(av(before.content))) assigned = std::max(assigned, before.id + 1);
      }
      if (assigned != token.id)
        return reader.error(path, absl::StrCat("\"", token.content, "\" has id ", token.id,
                                               " but `tokenizers` would give it ", assigned,
                                               " (its vocabulary id, or the next free id after "
                                               "model.vocab and the earlier added tokens)"));
      t->added_.push_back(std::move(token));
    }
  }

  // The id -> token table: the model's vocabulary, added tokens over it.
  int64_t size = 0;
  for (const auto& [token, id] : t->vocab_) size = std::max<int64_t>(size, id + 1);
  for (const AddedToken& a : t->added_) size = std::max<int64_t>(size, a.id + 1);
  t->id_to_token_.assign(size, std::string());
  t->has_token_.assign(size, false);
  t->is_special_.assign(size, false);
  for (const auto& [token, id] : t->vocab_) {
    if (t->has_token_[id])
      return reader.error(
          "model.vocab", absl::StrCat("id ", id, " is given to two tokens, \"", t->id_to_token_[id],
                                      "\" and \"", token, "\""));
    t->id_to_token_[id] = token;
    t->has_token_[id] = true;
  }
  for (const AddedToken& a : t->added_) {
    t->id_to_token_[a.id] = a.content;
    t->has_token_[a.id] = true;
    t->is_special_[a.id] = a.special;
  }
  for (int32_t id : t->prefix_ids_)
    if (id >= size || !t->has_token_[id])
      return reader.error("post_processor",
                          absl::StrCat("token id ", id, " is not in the vocabulary"));
  for (int32_t id : t->suffix_ids_)
    if (id >= size || !t->has_token_[id])
      return reader.error("post_processor",
                          absl::StrCat("token id ", id, " is not in the vocabulary"));
  // Matchers hold pointers into added_, which no longer changes. A normalized token is matched
  // after normalisation, so its content is normalised too.
  for (AddedToken& a : t->added_)
    if (a.normalized) a.content = t->normalize(a.content);
  for (const AddedToken& a : t->added_)
    (a.normalized ? t->normalized_matcher_ : t->raw_matcher_).add(&a);

  SY_RETURN_IF_ERROR(find_eos(dir, *t, &t->eos_ids_));
  return std::unique_ptr<Tokenizer>(std::move(t));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> load_bpe_tokenizer(const std::string& dir) {
  std::string path = (std::filesystem::path(dir) / "tokenizer.json").string();
  SY_ASSIGN_OR_RETURN(std::string text, read_file(path));
  auto root = parse_json(text);
  if (!root.ok())
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", root.status().message()));
  return parse_tokenizer(dir, *root, Reader(path));
}

}  // namespace sy
