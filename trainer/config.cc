#include "trainer/config.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <system_error>
#include <tuple>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/io/tokenizer.h"
#include "kernels/check.h"
#include "kernels/cpu/threads.h"
#include "trainer/regular_file.h"

namespace sy {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::DescriptorPool;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;
using google::protobuf::TextFormat;
using switchyard::Experiment;

// ---- parse errors ----------------------------------------------------------------------------

// Levenshtein distance, for "did you mean" on misspelt field names.
size_t edit_distance(absl::string_view a, absl::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1])});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// Protobuf says `Message type "switchyard.ModelConfig" has no field named "d_modle".`; the
// user's next question is what the right name is, so answer it.
std::string unknown_field_hint(const std::string& message) {
  const std::string kType = "Message type \"", kField = "has no field named \"";
  size_t type_at = message.find(kType), field_at = message.find(kField);
  if (type_at == std::string::npos || field_at == std::string::npos) return "";
  type_at += kType.size();
  field_at += kField.size();
  std::string type_name = message.substr(type_at, message.find('"', type_at) - type_at);
  std::string field = message.substr(field_at, message.find('"', field_at) - field_at);
  const Descriptor* type = DescriptorPool::generated_pool()->FindMessageTypeByName(type_name);
  if (type == nullptr) return "";
  std::vector<std::string> names;
  const FieldDescriptor* closest = nullptr;
  size_t closest_distance = 3;  // beyond 2 edits a suggestion is more confusing than helpful
  for (int i = 0; i < type->field_count(); ++i) {
    const FieldDescriptor* candidate = type->field(i);
    names.push_back(candidate->name());
    size_t distance = edit_distance(field, candidate->name());
    if (distance < closest_distance) closest = candidate, closest_distance = distance;
  }
  if (closest != nullptr) return absl::StrCat("; did you mean \"", closest->name(), "\"?");
  return absl::StrCat("; the fields of ", type->name(), " are: ", absl::StrJoin(names, ", "));
}

// Positions in a source text. Columns are counted the way protobuf's tokenizer counts them: a
// tab advances to the next multiple of 8.
constexpr int kTabWidth = 8;

int advance_column(int column, char c) {
  return c == '\t' ? column + kTabWidth - column % kTabWidth : column + 1;
}

// Byte offset of (line, column), both 0-based; npos when the text has no such position.
size_t offset_of(absl::string_view text, int line, int column) {
  size_t offset = 0;
  for (int l = 0; l < line; ++l) {
    offset = text.find('\n', offset);
    if (offset == absl::string_view::npos) return offset;
    ++offset;
  }
  for (int c = 0; c < column && offset < text.size() && text[offset] != '\n';) {
    c = advance_column(c, text[offset++]);
  }
  return offset;
}

std::pair<int, int> position_of(absl::string_view text, size_t offset) {
  int line = 0, column = 0;
  for (size_t i = 0; i < offset && i < text.size(); ++i) {
    if (text[i] == '\n') {
      ++line;
      column = 0;
    } else {
      column = advance_column(column, text[i]);
    }
  }
  return {line, column};
}

// Protobuf reports some errors at the token *after* the offending one: for an unknown or
// repeated field, the ':' after its name; for a bad enum value, whatever follows the value,
// often on the next line. When the message quotes the offending token, move (line, column) to
// its last whole-word occurrence before the reported position.
void point_at_quoted_token(absl::string_view text, const std::string& message, int& line,
                           int& column) {
  static const char* const kQuotes[] = {"has no field named \"", "Non-repeated field \"",
                                        "Unknown enumeration value of \""};
  std::string token;
  for (const char* quote : kQuotes) {
    size_t at = message.find(quote);
    if (at == std::string::npos) continue;
    at += std::strlen(quote);
    token = message.substr(at, message.find('"', at) - at);
    break;
  }
  size_t end = offset_of(text, line, column);
  if (token.empty() || end == absl::string_view::npos) return;
  auto is_word = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; };
  // Text after '#' on a line is a comment (a '#' inside a string literal is rare enough in a
  // config to ignore here: the worst case is a less precise caret).
  auto in_comment = [&](size_t at) {
    size_t line_begin = text.rfind('\n', at);
    line_begin = line_begin == absl::string_view::npos ? 0 : line_begin + 1;
    return text.substr(line_begin, at - line_begin).find('#') != absl::string_view::npos;
  };
  size_t at = text.rfind(token, end);
  while (at != absl::string_view::npos) {
    size_t after = at + token.size();
    if ((at == 0 || !is_word(text[at - 1])) && (after >= text.size() || !is_word(text[after])) &&
        !in_comment(at)) {
      std::tie(line, column) = position_of(text, at);
      return;
    }
    if (at == 0) return;
    at = text.rfind(token, at - 1);
  }
}

// The offending source line with a caret under the column, indented by two spaces. Tabs are
// expanded so that the caret lines up with the tokenizer's column.
std::string source_excerpt(absl::string_view text, int line, int column) {
  size_t begin = offset_of(text, line, 0);
  if (begin == absl::string_view::npos) return "";
  size_t end = std::min(text.find('\n', begin), text.size());
  std::string expanded;
  for (char c : text.substr(begin, end - begin)) {
    if (c == '\r') continue;
    // Control bytes (a binary file passed by mistake) would garble the terminal.
    if (std::iscntrl(static_cast<unsigned char>(c)) && c != '\t') c = '?';
    int width =
        advance_column(static_cast<int>(expanded.size()), c) - static_cast<int>(expanded.size());
    expanded.append(width, c == '\t' ? ' ' : c);
  }
  return absl::StrCat("\n  ", expanded, "\n  ", std::string(std::max(column, 0), ' '), "^");
}

// Collects the parser's errors as `label:line:col: message` (1-based), each followed by the
// offending line of text and a caret.
class LabelledErrorCollector : public google::protobuf::io::ErrorCollector {
 public:
  LabelledErrorCollector(absl::string_view label, absl::string_view text)
      : label_(label), text_(text) {}

  void AddError(int line, google::protobuf::io::ColumnNumber column,
                const std::string& message) override {
    std::string what(absl::StripSuffix(message, "."));
    // At the end of the input the parser reports the empty token it found there, e.g.
    // `Expected identifier, got: `; the usual cause is a message left open.
    if (absl::EndsWith(what, "got: ")) {
      what += "end of input; is a closing '}' missing?";
    } else {
      what += unknown_field_hint(message);
    }
    // Errors that belong to no position (the parser passes -1) name only the source.
    if (line < 0) {
      errors_.push_back(absl::StrCat(label_, ": ", what));
      return;
    }
    point_at_quoted_token(text_, message, line, column);
    errors_.push_back(absl::StrCat(label_, ":", line + 1, ":", column + 1, ": ", what,
                                   source_excerpt(text_, line, column)));
  }

  std::string message() const {
    return errors_.empty() ? absl::StrCat(label_, ": cannot be parsed as a switchyard.Experiment")
                           : absl::StrJoin(errors_, "\n");
  }

 private:
  std::string label_;
  absl::string_view text_;
  std::vector<std::string> errors_;
};

struct ParsedSource {
  Experiment experiment;
  std::unique_ptr<TextFormat::ParseInfoTree> info;
};

// Parses one source on its own. Parse (not Merge) so that a singular field given twice within
// one source is reported instead of silently taking the last value.
absl::StatusOr<ParsedSource> parse_source(absl::string_view label, absl::string_view text) {
  ParsedSource parsed{Experiment(), std::make_unique<TextFormat::ParseInfoTree>()};
  LabelledErrorCollector errors(label, text);
  TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  parser.WriteLocationsTo(parsed.info.get());
  if (!parser.ParseFromString(std::string(text), &parsed.experiment)) {
    return absl::InvalidArgumentError(errors.message());
  }
  return parsed;
}

absl::StatusOr<std::string> read_config_file(const std::string& path) {
  std::error_code error;
  std::filesystem::file_status status = std::filesystem::status(path, error);
  // Not "not found" when the path exists but cannot be looked at (e.g. a directory on the way
  // without search permission): the fix is different.
  if (error && error != std::errc::no_such_file_or_directory) {
    return absl::PermissionDeniedError(absl::StrCat(path, ": cannot access config file (",
                                                    error.message(),
                                                    "); check the path and its permissions"));
  }
  if (!std::filesystem::exists(status)) {
    return absl::NotFoundError(
        absl::StrCat(path, ": config file not found; check the --config path"));
  }
  if (std::filesystem::is_directory(status)) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": is a directory, not a config file; pass a .textproto file to --config"));
  }
  // A FIFO (or a device) would block the read below forever.
  SY_RETURN_IF_ERROR(require_regular_file(path, "config file"));
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::PermissionDeniedError(absl::StrCat(
        path, ": cannot open config file (", std::strerror(errno), "); check that it is readable"));
  }
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) {
    return absl::DataLossError(absl::StrCat(path, ": cannot read config file (",
                                            std::strerror(errno), "); check the file"));
  }
  return text;
}

bool sets_nothing(const Message& message) {
  std::vector<const FieldDescriptor*> fields;
  message.GetReflection()->ListFields(message, &fields);
  return fields.empty();
}

// ---- merging ---------------------------------------------------------------------------------

// MergeFrom appends repeated fields; an override must replace them. So first clear, in `to`,
// every repeated field that `from` sets (descending into the singular messages `from` sets),
// then MergeFrom: scalars are overwritten, messages merged field by field, and the cleared
// repeated fields end up holding exactly `from`'s elements.
void clear_repeated_set_in(const Message& from, Message* to) {
  const Reflection* from_reflection = from.GetReflection();
  const Reflection* to_reflection = to->GetReflection();
  std::vector<const FieldDescriptor*> fields;
  from_reflection->ListFields(from, &fields);
  for (const FieldDescriptor* field : fields) {
    if (field->is_repeated()) {
      to_reflection->ClearField(to, field);
    } else if (field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
      clear_repeated_set_in(from_reflection->GetMessage(from, field),
                            to_reflection->MutableMessage(to, field));
    }
  }
}

void merge_replacing(const Experiment& from, Experiment* to) {
  clear_repeated_set_in(from, to);
  to->MergeFrom(from);
}

// ---- defaults --------------------------------------------------------------------------------

void set_defaults(Message* message) {
  const Descriptor* type = message->GetDescriptor();
  const Reflection* reflection = message->GetReflection();
  for (int i = 0; i < type->field_count(); ++i) {
    const FieldDescriptor* field = type->field(i);
    // A repeated field has no default: unset, it is empty.
    if (field->is_repeated()) continue;
    if (field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
      set_defaults(reflection->MutableMessage(message, field));
      continue;
    }
    if (reflection->HasField(*message, field)) continue;
    // The getter of an unset field returns its default; setting that value makes it explicit.
    switch (field->cpp_type()) {
      case FieldDescriptor::CPPTYPE_INT32:
        reflection->SetInt32(message, field, reflection->GetInt32(*message, field));
        break;
      case FieldDescriptor::CPPTYPE_INT64:
        reflection->SetInt64(message, field, reflection->GetInt64(*message, field));
        break;
      case FieldDescriptor::CPPTYPE_UINT32:
        reflection->SetUInt32(message, field, reflection->GetUInt32(*message, field));
        break;
      case FieldDescriptor::CPPTYPE_UINT64:
        reflection->SetUInt64(message, field, reflection->GetUInt64(*message, field));
        break;
      case FieldDescriptor::CPPTYPE_DOUBLE:
        reflection->SetDouble(message, field, reflection->GetDouble(*message, field));
        break;
      case FieldDescriptor::CPPTYPE_FLOAT:
        reflection->SetFloat(message, field, reflection->GetFloat(*message, field));
        break;
      case FieldDescriptor::CPPTYPE_BOOL:
        reflection->SetBool(message, field, reflection->GetBool(*message, field));
        break;
      case FieldDescriptor::CPPTYPE_ENUM:
        reflection->SetEnum(message, field, reflection->GetEnum(*message, field));
        break;
      case FieldDescriptor::CPPTYPE_STRING:
        reflection->SetString(message, field, reflection->GetString(*message, field));
        break;
      case FieldDescriptor::CPPTYPE_MESSAGE:
        break;  // handled above
    }
  }
}

// ---- validation ------------------------------------------------------------------------------

// The descriptor chain of a dot-separated field path from Experiment; empty when a name does
// not resolve (a typo in a rule, caught by the rule tests).
std::vector<const FieldDescriptor*> resolve_path(absl::string_view path) {
  std::vector<const FieldDescriptor*> chain;
  const Descriptor* type = Experiment::descriptor();
  for (absl::string_view name : absl::StrSplit(path, '.')) {
    const FieldDescriptor* field =
        type == nullptr ? nullptr : type->FindFieldByName(std::string(name));
    SY_CHECK(field != nullptr) << "no field " << name << " in config path " << path;
    chain.push_back(field);
    type = field->message_type();
  }
  return chain;
}

// Whether `message` sets the field at the end of `chain` (every message on the way set too).
bool has_path(const Message& message, const std::vector<const FieldDescriptor*>& chain) {
  const Message* current = &message;
  for (size_t i = 0; i < chain.size(); ++i) {
    const Reflection* reflection = current->GetReflection();
    if (chain[i]->is_repeated()) {
      return i + 1 == chain.size() && reflection->FieldSize(*current, chain[i]) > 0;
    }
    if (!reflection->HasField(*current, chain[i])) return false;
    if (i + 1 < chain.size()) current = &reflection->GetMessage(*current, chain[i]);
  }
  return true;
}

// "model.d_model", "N" -> "model { d_model: N }": the text a user writes to set the field.
std::string setting(absl::string_view path, absl::string_view value) {
  std::vector<absl::string_view> names = absl::StrSplit(path, '.');
  std::string text = absl::StrCat(names.back(), ": ", value);
  for (size_t i = names.size() - 1; i-- > 0;) text = absl::StrCat(names[i], " { ", text, " }");
  return text;
}

using Problems = ConfigProblems;

// The upper ends of the ranges in configs/switchyard.proto. Far above any model trained
// today, low enough that every tensor dimension built from them (2 * hidden for the fused
// SwiGLU weight, n_heads * head_dim) stays within int32 and every parameter count within
// int64, and that a typo (an extra zero or three) is caught here rather than by an
// allocation; the memory estimate (trainer/memory_estimate.h) judges what fits a machine.
constexpr int64_t kMaxVocab = int64_t{1} << 24;
constexpr int64_t kMaxDModel = int64_t{1} << 16;
constexpr int64_t kMaxLayers = 1024;
constexpr int64_t kMaxHeads = 1024;
constexpr int64_t kMaxHeadDim = 4096;
constexpr int64_t kMaxSeqLen = int64_t{1} << 20;
constexpr int64_t kMaxHidden = int64_t{1} << 20;
constexpr int64_t kMaxExperts = int64_t{1} << 16;
constexpr int64_t kMaxSharedExperts = 1024;
constexpr int64_t kMaxMtpModules = 64;
constexpr int64_t kMaxBatch = int64_t{1} << 20;
constexpr int64_t kMaxExamples = 1'000'000;
constexpr int64_t kMaxKeepLast = 1'000'000;

void validate_model(const switchyard::ModelConfig& model, Problems& problems) {
  problems.positive("model.vocab_size", model.vocab_size());
  problems.at_most("model.vocab_size", model.vocab_size(), kMaxVocab, "2^24 token ids");
  problems.positive("model.d_model", model.d_model());
  problems.at_most("model.d_model", model.d_model(), kMaxDModel, "2^16");
  problems.positive("model.n_layers", model.n_layers());
  problems.at_most("model.n_layers", model.n_layers(), kMaxLayers, "blocks");
  problems.positive("model.n_heads", model.n_heads());
  problems.at_most("model.n_heads", model.n_heads(), kMaxHeads, "heads");
  problems.positive("model.n_kv_heads", model.n_kv_heads());
  problems.positive("model.seq_len", model.seq_len());
  problems.at_most("model.seq_len", model.seq_len(), kMaxSeqLen, "2^20 positions");
  problems.positive_real("model.rope_theta", model.rope_theta());
  problems.positive_real("model.norm_eps", model.norm_eps());
  problems.positive_real("model.init_std", model.init_std());

  if (model.head_dim() < 0) {
    problems.non_negative("model.head_dim", model.head_dim());
  } else if (model.head_dim() > kMaxHeadDim) {
    problems.at_most("model.head_dim", model.head_dim(), kMaxHeadDim, "dims per head");
  } else if (model.head_dim() % 2 != 0) {
    problems.add({"model.head_dim"},
                 absl::StrCat("model.head_dim = ", model.head_dim(),
                              " is odd, but rotary embeddings rotate pairs of dims"),
                 "set head_dim to an even number (or 0 for d_model / n_heads)");
  } else if (model.head_dim() == 0 && model.d_model() > 0 && model.n_heads() > 0) {
    if (model.d_model() % model.n_heads() != 0) {
      problems.add({"model.d_model", "model.n_heads"},
                   absl::StrCat("model.d_model = ", model.d_model(),
                                " is not divisible by model.n_heads = ", model.n_heads()),
                   "make d_model a multiple of n_heads (each head gets d_model / n_heads dims)");
    } else if ((model.d_model() / model.n_heads()) % 2 != 0) {
      problems.add({"model.d_model", "model.n_heads"},
                   absl::StrCat("the head dim model.d_model / model.n_heads = ", model.d_model(),
                                " / ", model.n_heads(), " = ", model.d_model() / model.n_heads(),
                                " is odd, but rotary embeddings rotate pairs of dims"),
                   "choose d_model and n_heads so that d_model / n_heads is even");
    }
  }
  if (model.n_heads() > 0 && model.n_kv_heads() > 0 && model.n_heads() % model.n_kv_heads() != 0) {
    problems.add({"model.n_kv_heads", "model.n_heads"},
                 absl::StrCat("model.n_kv_heads = ", model.n_kv_heads(),
                              " does not divide model.n_heads = ", model.n_heads()),
                 "set n_kv_heads to a divisor of n_heads (each key/value head serves "
                 "n_heads / n_kv_heads query heads)");
  }
  if (model.first_k_dense() < 0) {
    problems.non_negative("model.first_k_dense", model.first_k_dense());
  } else if (model.n_layers() > 0 && model.first_k_dense() > model.n_layers()) {
    problems.add({"model.first_k_dense", "model.n_layers"},
                 absl::StrCat("model.first_k_dense = ", model.first_k_dense(),
                              " exceeds model.n_layers = ", model.n_layers()),
                 "set first_k_dense to at most n_layers (equal = a dense model)");
  }
  if (model.first_k_dense() > 0 && model.dense_ffn_hidden() <= 0) {
    problems.add({"model.dense_ffn_hidden", "model.first_k_dense"},
                 absl::StrCat("model.dense_ffn_hidden = ", model.dense_ffn_hidden(),
                              ", but the first model.first_k_dense = ", model.first_k_dense(),
                              " block(s) have a dense FFN"),
                 absl::StrCat("set ", setting("model.dense_ffn_hidden", "N"), " with N > 0"));
  }
  problems.at_most("model.dense_ffn_hidden", model.dense_ffn_hidden(), kMaxHidden,
                   "2^20; the FFN's weights are [2 * N, d_model] and [d_model, N]");
}

// Routing rules, checked only when the model has MoE blocks.
void validate_moe(const Experiment& experiment, Problems& problems) {
  const switchyard::MoeConfig& moe = experiment.moe();
  const std::string why = absl::StrCat(
      ", but blocks ", experiment.model().first_k_dense(), "..", experiment.model().n_layers() - 1,
      " (from model.first_k_dense = ", experiment.model().first_k_dense(), ") are MoE blocks");
  if (moe.num_experts() < 1) {
    problems.add({"moe.num_experts", "model.first_k_dense"},
                 absl::StrCat("moe.num_experts = ", moe.num_experts(), why),
                 "set moe { num_experts: N }, or make every block dense with "
                 "model { first_k_dense: <n_layers> }");
  }
  if (moe.expert_hidden() <= 0) {
    problems.add({"moe.expert_hidden", "model.first_k_dense"},
                 absl::StrCat("moe.expert_hidden = ", moe.expert_hidden(), why),
                 "set moe { expert_hidden: N } with N > 0");
  }
  problems.at_most("moe.num_experts", moe.num_experts(), kMaxExperts, "2^16");
  problems.at_most("moe.expert_hidden", moe.expert_hidden(), kMaxHidden,
                   "2^20; each expert's weights are [2 * N, d_model] and [d_model, N]");
  problems.non_negative("moe.num_shared_experts", moe.num_shared_experts());
  problems.at_most("moe.num_shared_experts", moe.num_shared_experts(), kMaxSharedExperts,
                   "shared experts");
  problems.positive_real("moe.route_scale", moe.route_scale());
  if (moe.num_experts() < 1) return;  // the remaining rules divide by it

  if (moe.top_k() < 1 || moe.top_k() > moe.num_experts()) {
    problems.add({"moe.top_k", "moe.num_experts"},
                 absl::StrCat("moe.top_k = ", moe.top_k(),
                              " is outside [1, moe.num_experts = ", moe.num_experts(), "]"),
                 "set moe { top_k: K } with 1 <= K <= num_experts");
  }
  if (moe.n_groups() < 1) {
    problems.positive("moe.n_groups", moe.n_groups());
  } else if (moe.num_experts() % moe.n_groups() != 0) {
    problems.add({"moe.n_groups", "moe.num_experts"},
                 absl::StrCat("moe.n_groups = ", moe.n_groups(),
                              " does not divide moe.num_experts = ", moe.num_experts()),
                 "set n_groups to a divisor of num_experts (1 = no group-limited routing)");
  } else if (moe.topk_groups() < 1 || moe.topk_groups() > moe.n_groups()) {
    problems.add({"moe.topk_groups", "moe.n_groups"},
                 absl::StrCat("moe.topk_groups = ", moe.topk_groups(),
                              " is outside [1, moe.n_groups = ", moe.n_groups(), "]"),
                 "set moe { topk_groups: G } with 1 <= G <= n_groups");
  } else if (moe.top_k() >= 1) {
    const int per_group = moe.num_experts() / moe.n_groups();
    const int reachable = moe.topk_groups() * per_group;
    if (moe.top_k() > reachable) {
      problems.add({"moe.top_k", "moe.topk_groups", "moe.n_groups", "moe.num_experts"},
                   absl::StrCat("moe.top_k = ", moe.top_k(), " exceeds the ", reachable,
                                " experts reachable in moe.topk_groups = ", moe.topk_groups(),
                                " group(s) of moe.num_experts / moe.n_groups = ", per_group),
                   "raise topk_groups or lower top_k");
    }
  }
  const int ep = experiment.parallel().expert_parallel_size();
  if (ep >= 1 && moe.num_experts() % ep != 0) {
    problems.add({"parallel.expert_parallel_size", "moe.num_experts"},
                 absl::StrCat("parallel.expert_parallel_size = ", ep,
                              " does not divide moe.num_experts = ", moe.num_experts()),
                 "set expert_parallel_size to a divisor of num_experts (each rank of an "
                 "expert-parallel group owns num_experts / expert_parallel_size experts)");
  }
}

void validate_data(const switchyard::DataConfig& data, Problems& problems) {
  if (data.source() == switchyard::DataConfig::DATA_SHARDS) {
    if (data.train_shards().empty()) {
      problems.add({"data.train_shards", "data.source"},
                   "data.source is DATA_SHARDS but data.train_shards is empty",
                   "set data { train_shards: \"path/to/train_*.bin\" }");
    }
    return;
  }
  const switchyard::ArithmeticTask& task = data.arithmetic();
  // Two 9-digit operands keep every result within int64.
  constexpr int kMaxDigits = 9;
  if (task.min_digits() < 1) {
    problems.add("data.arithmetic.min_digits",
                 absl::StrCat("must be >= 1, got ", task.min_digits()),
                 "set data { arithmetic { min_digits: N } } with N >= 1");
  } else if (task.max_digits() < task.min_digits()) {
    problems.add({"data.arithmetic.max_digits", "data.arithmetic.min_digits"},
                 absl::StrCat("data.arithmetic.max_digits = ", task.max_digits(),
                              " is less than data.arithmetic.min_digits = ", task.min_digits()),
                 "set max_digits >= min_digits");
  }
  if (task.max_digits() > kMaxDigits) {
    problems.add("data.arithmetic.max_digits",
                 absl::StrCat("must be <= ", kMaxDigits, " so results fit in 64 bits, got ",
                              task.max_digits()),
                 absl::StrCat("set max_digits <= ", kMaxDigits));
  }
  if (task.operators().empty() || task.operators().find_first_not_of("+-*") != std::string::npos) {
    problems.add(
        "data.arithmetic.operators",
        absl::StrCat("must be a non-empty subset of \"+-*\", got \"", task.operators(), "\""),
        "set data { arithmetic { operators: \"+-\" } } using only + - *");
  }
  problems.non_negative("data.arithmetic.eval_examples", task.eval_examples());
  problems.at_most("data.arithmetic.eval_examples", task.eval_examples(), kMaxExamples,
                   "problems scored at every evaluation");
}

}  // namespace

// ---- ConfigProblems ------------------------------------------------------------------------

void ConfigProblems::add(std::initializer_list<absl::string_view> fields, absl::string_view wrong,
                         absl::string_view fix) {
  absl::string_view field = *fields.begin();
  for (absl::string_view candidate : fields) {
    if (sources_.last_setter(candidate) > sources_.last_setter(field)) field = candidate;
  }
  std::string where = sources_.where(field);
  // A value nobody set is the schema default; say so, or the user hunts for it in the file.
  absl::string_view unset = has_path(experiment_, resolve_path(field)) ? "" : " (not set)";
  lines_.push_back(
      absl::StrCat(where, where.empty() ? "" : ": ", field, ": ", wrong, unset, "; ", fix));
}

void ConfigProblems::positive(absl::string_view field, int64_t value) {
  if (value <= 0) {
    add(field, absl::StrCat("must be > 0, got ", value),
        absl::StrCat("set ", setting(field, "N"), " with N > 0"));
  }
}

void ConfigProblems::non_negative(absl::string_view field, int64_t value) {
  if (value < 0) {
    add(field, absl::StrCat("must be >= 0, got ", value),
        absl::StrCat("set ", setting(field, "N"), " with N >= 0"));
  }
}

void ConfigProblems::at_most(absl::string_view field, int64_t value, int64_t max,
                             absl::string_view why) {
  if (value > max) {
    add(field, absl::StrCat("must be <= ", max, " (", why, "), got ", value),
        absl::StrCat("set ", setting(field, "N"), " with N <= ", max));
  }
}

// The comparisons are written as !(value > 0) so that NaN fails them.
void ConfigProblems::positive_real(absl::string_view field, double value) {
  if (!(value > 0)) {
    add(field, absl::StrCat("must be > 0, got ", value),
        absl::StrCat("set ", setting(field, "x"), " with x > 0"));
  } else {
    finite(field, value);
  }
}

void ConfigProblems::non_negative_real(absl::string_view field, double value,
                                       absl::string_view zero_means) {
  if (!(value >= 0)) {
    add(field, absl::StrCat("must be >= 0, got ", value),
        absl::StrCat("set ", setting(field, "x"), " with x >= 0 (", zero_means, ")"));
  } else {
    finite(field, value);
  }
}

void ConfigProblems::finite(absl::string_view field, double value) {
  if (!std::isfinite(value)) {
    add(field, absl::StrCat("must be finite, got ", value),
        absl::StrCat("set ", setting(field, "x"), " to a finite number"));
  }
}

void ConfigProblems::unit_interval_open(absl::string_view field, double value) {
  if (!(value >= 0 && value < 1)) {
    add(field, absl::StrCat("must be in [0, 1), got ", value),
        absl::StrCat("set ", setting(field, "x"), " with 0 <= x < 1"));
  }
}

absl::Status ConfigProblems::status() const {
  if (lines_.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrJoin(lines_, "\n"));
}

std::string config_setting(absl::string_view field_path, absl::string_view value) {
  return setting(field_path, value);
}

// ---- ConfigSources -------------------------------------------------------------------------

struct ConfigSources::Source {
  std::string label;
  Experiment parsed;
  std::unique_ptr<TextFormat::ParseInfoTree> info;
};

ConfigSources::ConfigSources() = default;
ConfigSources::~ConfigSources() = default;
ConfigSources::ConfigSources(ConfigSources&&) noexcept = default;
ConfigSources& ConfigSources::operator=(ConfigSources&&) noexcept = default;

void ConfigSources::add(std::string label, Experiment parsed,
                        std::unique_ptr<TextFormat::ParseInfoTree> info) {
  SY_CHECK(info != nullptr) << "ConfigSources::add needs the parse info of " << label;
  sources_.push_back(Source{std::move(label), std::move(parsed), std::move(info)});
}

std::optional<std::pair<int, std::string>> ConfigSources::locate(
    absl::string_view field_path) const {
  std::vector<const FieldDescriptor*> chain = resolve_path(field_path);
  for (int index = static_cast<int>(sources_.size()) - 1; index >= 0; --index) {
    const Source& source = sources_[index];
    if (!has_path(source.parsed, chain)) continue;
    // Each source was parsed without overwrites, so every singular message it sets has one
    // nested tree (index -1); a repeated field points at its first element.
    const TextFormat::ParseInfoTree* tree = source.info.get();
    for (size_t i = 0; i + 1 < chain.size() && tree != nullptr; ++i) {
      tree = tree->GetTreeForNested(chain[i], -1);
    }
    if (tree == nullptr) continue;
    const FieldDescriptor* field = chain.back();
    TextFormat::ParseLocation location = tree->GetLocation(field, field->is_repeated() ? 0 : -1);
    if (location.line < 0) continue;
    return std::make_pair(
        index, absl::StrCat(source.label, ":", location.line + 1, ":", location.column + 1));
  }
  return std::nullopt;
}

std::string ConfigSources::where(absl::string_view field_path) const {
  auto location = locate(field_path);
  return location ? location->second : "";
}

int ConfigSources::last_setter(absl::string_view field_path) const {
  auto location = locate(field_path);
  return location ? location->first : -1;
}

// ---- public API ----------------------------------------------------------------------------

namespace {

struct LoadedSources {
  Experiment experiment;
  ConfigSources sources;
};

absl::StatusOr<LoadedSources> parse_sources(const std::string& config_path,
                                            const std::vector<std::string>& overrides) {
  LoadedSources loaded;
  SY_ASSIGN_OR_RETURN(std::string text, read_config_file(config_path));
  SY_ASSIGN_OR_RETURN(ParsedSource file, parse_source(config_path, text));
  if (sets_nothing(file.experiment)) {
    return absl::InvalidArgumentError(absl::StrCat(
        config_path,
        ": the config file is empty (only whitespace and comments); write an experiment in "
        "Protobuf text format, e.g. start from configs/tiny.textproto"));
  }
  loaded.experiment = file.experiment;
  loaded.sources.add(config_path, std::move(file.experiment), std::move(file.info));

  for (size_t i = 0; i < overrides.size(); ++i) {
    // Quote the fragment on one line so the label stays a single token in error messages.
    std::string label = absl::StrCat("--set #", i + 1, " '",
                                     absl::StrReplaceAll(overrides[i], {{"\n", "\\n"}}), "'");
    SY_ASSIGN_OR_RETURN(ParsedSource fragment, parse_source(label, overrides[i]));
    if (sets_nothing(fragment.experiment)) {
      return absl::InvalidArgumentError(
          absl::StrCat(label,
                       ": sets no field; give a text-format fragment such as "
                       "--set 'optimizer { lr: 1e-3 }'"));
    }
    merge_replacing(fragment.experiment, &loaded.experiment);
    loaded.sources.add(std::move(label), std::move(fragment.experiment), std::move(fragment.info));
  }
  return loaded;
}

}  // namespace

absl::StatusOr<Experiment> load_experiment(const std::string& config_path,
                                           const std::vector<std::string>& overrides,
                                           const ConfigRules& rules) {
  SY_ASSIGN_OR_RETURN(LoadedSources loaded, parse_sources(config_path, overrides));
  SY_RETURN_IF_ERROR(validate_experiment(loaded.experiment, loaded.sources, rules));
  return std::move(loaded.experiment);
}

absl::StatusOr<Experiment> parse_experiment(const std::string& config_path,
                                            const std::vector<std::string>& overrides) {
  SY_ASSIGN_OR_RETURN(LoadedSources loaded, parse_sources(config_path, overrides));
  return std::move(loaded.experiment);
}

absl::Status validate_experiment(const Experiment& experiment, const ConfigSources& sources,
                                 const ConfigRules& rules) {
  Problems problems(experiment, sources);
  if (experiment.run_dir().empty()) {
    problems.add("run_dir", "is empty", "set run_dir: \"runs/<name>\"");
  }
  if (experiment.precision() == Experiment::PRECISION_BF16 &&
      experiment.device() == Experiment::DEVICE_CPU) {
    problems.add({"precision", "device"}, "asks for bf16 on the CPU, whose kernels are f32",
                 "set precision: PRECISION_F32 (or PRECISION_AUTO), or device: DEVICE_CUDA");
  }
  // A fine-tuning config takes the model from its init checkpoint's run, and may leave the
  // training sizes to it too.
  const bool from_checkpoint = rules.model_from_checkpoint;
  const switchyard::ModelConfig& model = experiment.model();
  if (!from_checkpoint) {
    validate_model(model, problems);
    // MoE blocks exist when the dense prefix does not cover every layer.
    if (model.n_layers() > 0 && model.first_k_dense() >= 0 &&
        model.first_k_dense() < model.n_layers()) {
      validate_moe(experiment, problems);
    }
  }
  const switchyard::MoeConfig& moe = experiment.moe();
  problems.non_negative_real("moe.capacity_factor", moe.capacity_factor(), "0 = dropless");
  problems.non_negative_real("moe.aux_loss_coef", moe.aux_loss_coef(), "0 = off");
  problems.non_negative_real("moe.z_loss_coef", moe.z_loss_coef(), "0 = off");
  problems.non_negative_real("moe.seq_aux_loss_coef", moe.seq_aux_loss_coef(), "0 = off");
  problems.non_negative_real("moe.bias_update_rate", moe.bias_update_rate(), "0 = off");

  problems.non_negative("mtp.num_modules", experiment.mtp().num_modules());
  problems.at_most("mtp.num_modules", experiment.mtp().num_modules(), kMaxMtpModules,
                   "MTP modules");
  problems.non_negative_real("mtp.loss_weight", experiment.mtp().loss_weight(), "0 = no MTP loss");

  const switchyard::ParallelConfig& parallel = experiment.parallel();
  problems.positive("parallel.expert_parallel_size", parallel.expert_parallel_size());
  problems.at_most("parallel.expert_parallel_size", parallel.expert_parallel_size(), kMaxExperts,
                   "ranks per expert-parallel group");
  if (parallel.zero_stage() != 0 && parallel.zero_stage() != 1) {
    problems.add("parallel.zero_stage", absl::StrCat("must be 0 or 1, got ", parallel.zero_stage()),
                 "set parallel { zero_stage: 0 } (replicated optimizer state) or 1 (sharded)");
  }
  if (parallel.collective_timeout_s() < 0 || parallel.collective_timeout_s() > 604800) {
    problems.add("parallel.collective_timeout_s",
                 absl::StrCat("must be in [0, 604800], got ", parallel.collective_timeout_s()),
                 "set parallel { collective_timeout_s: N } with N seconds (0 = wait forever)");
  }

  validate_data(experiment.data(), problems);

  const switchyard::OptimizerConfig& optimizer = experiment.optimizer();
  problems.positive_real("optimizer.lr", optimizer.lr());
  problems.unit_interval_open("optimizer.beta1", optimizer.beta1());
  problems.unit_interval_open("optimizer.beta2", optimizer.beta2());
  problems.positive_real("optimizer.eps", optimizer.eps());
  problems.non_negative_real("optimizer.weight_decay", optimizer.weight_decay(), "0 = off");
  problems.non_negative_real("optimizer.grad_clip", optimizer.grad_clip(), "0 = off");
  if (optimizer.moment_dtype() == switchyard::OptimizerConfig::MOMENT_BF16) {
    // A step changes a moment by (1 - beta) (sample - moment); a bf16 moment keeps 8 significant
    // bits, and changes under half its ulp (0.2% to 0.4%) round back.
    for (const auto& [field, beta] : {std::pair{"optimizer.beta1", optimizer.beta1()},
                                      std::pair{"optimizer.beta2", optimizer.beta2()}}) {
      if (beta > 0.99 && beta < 1) {  // 1 and above: unit_interval_open says so
        problems.add(
            {"optimizer.moment_dtype", field},
            absl::StrCat("optimizer.moment_dtype = MOMENT_BF16 with ", field, " = ", beta,
                         " > 0.99: with 1 - beta below ~1/100, a bf16 moment (8 significant bits) "
                         "can no longer absorb the per-step change and stalls"),
            absl::StrCat("set ", setting(field, "x"), " with x <= 0.99 (DeepSeek-V3 trains bf16 ",
                         "moments with beta2 = 0.95), or ",
                         setting("optimizer.moment_dtype", "MOMENT_F32")));
      }
    }
  }

  const switchyard::TrainConfig& train = experiment.train();
  if (!from_checkpoint || train.has_steps()) problems.positive("train.steps", train.steps());
  if (!from_checkpoint || train.has_micro_batch())
    problems.positive("train.micro_batch", train.micro_batch());
  problems.at_most("train.micro_batch", train.micro_batch(), kMaxBatch, "2^20 sequences");
  problems.positive("train.grad_accum", train.grad_accum());
  problems.at_most("train.grad_accum", train.grad_accum(), kMaxBatch, "2^20 micro-batches");
  problems.non_negative("train.eval_interval", train.eval_interval());
  problems.positive("train.log_interval", train.log_interval());
  problems.non_negative("train.cpu_threads", train.cpu_threads());
  problems.at_most("train.cpu_threads", train.cpu_threads(), cpu::kMaxCpuThreads,
                   "threads one process starts per parallel loop; 0 = all cores");
  problems.non_negative("train.profile_step", train.profile_step());
  if (train.steps() > 0) {
    problems.at_most("train.profile_step", train.profile_step(), train.steps(),
                     "a step of the run; 0 = never");
  }
  problems.non_negative("train.max_skipped_steps", train.max_skipped_steps());

  const switchyard::ScheduleConfig& schedule = experiment.schedule();
  if (schedule.warmup_steps() < 0) {
    problems.non_negative("schedule.warmup_steps", schedule.warmup_steps());
  } else if (train.steps() > 0 && schedule.warmup_steps() > train.steps()) {
    problems.add({"schedule.warmup_steps", "train.steps"},
                 absl::StrCat("schedule.warmup_steps = ", schedule.warmup_steps(),
                              " exceeds train.steps = ", train.steps()),
                 "lower warmup_steps or raise steps");
  }
  if (!(schedule.min_lr_ratio() >= 0 && schedule.min_lr_ratio() <= 1)) {
    problems.add("schedule.min_lr_ratio",
                 absl::StrCat("must be in [0, 1], got ", schedule.min_lr_ratio()),
                 "set schedule { min_lr_ratio: x } with 0 <= x <= 1");
  }

  problems.non_negative("checkpoint.interval", experiment.checkpoint().interval());
  problems.positive("checkpoint.keep_last", experiment.checkpoint().keep_last());
  problems.at_most("checkpoint.keep_last", experiment.checkpoint().keep_last(), kMaxKeepLast,
                   "checkpoints kept");
  problems.non_negative_real("logging.peak_tflops", experiment.logging().peak_tflops(),
                             "0 = from the table of known GPUs");
  if (rules.extra) rules.extra(experiment, problems);
  return problems.status();
}

std::string experiment_to_text(const Experiment& experiment) {
  std::string text;
  TextFormat::Printer printer;
  SY_CHECK(printer.PrintToString(experiment, &text)) << "cannot print the experiment config";
  return text;
}

Experiment with_defaults_set(const Experiment& experiment) {
  Experiment resolved = experiment;
  set_defaults(&resolved);
  return resolved;
}

std::string resolved_experiment_text(const Experiment& experiment) {
  return experiment_to_text(with_defaults_set(experiment));
}

}  // namespace sy
