#include "trainer/data/text_data.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "trainer/data/jsonl.h"
#include "trainer/progress.h"
#include "trainer/token_shards.h"

namespace sy {
namespace {

namespace fs = std::filesystem;

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

// Streams token ids into a scratch file (their count is unknown until the end, and the val
// split is the tail), with a progress line over the input bytes read.
class TokenSink {
 public:
  TokenSink(std::string path, std::ostream* progress, int64_t input_bytes)
      : path_(std::move(path)), out_(path_, std::ios::binary) {
    if (progress) {
      progress_.emplace(*progress, "data", input_bytes, "bytes", is_terminal(*progress));
      progress_->count_also("tokens", "tok/s");
    }
  }
  bool ok() const { return static_cast<bool>(out_); }
  void add(const std::vector<int32_t>& ids) {
    out_.write(reinterpret_cast<const char*>(ids.data()),
               static_cast<std::streamsize>(ids.size() * sizeof(int32_t)));
    tokens_ += static_cast<int64_t>(ids.size());
  }
  // For a JSONL input, n counts the text fields' bytes, a little less than the lines'.
  void read_bytes(int64_t n) {
    bytes_ += n;
    if (progress_) progress_->update(bytes_, tokens_);
  }
  // The summary, once every input was read whole: all of their bytes.
  void finish(int64_t input_bytes, const std::string& detail) {
    if (progress_) progress_->finish(input_bytes, tokens_, detail);
  }
  absl::Status close() {
    out_.close();
    if (!out_) return absl::DataLossError(absl::StrCat(path_, ": write failed (disk full?)"));
    return absl::OkStatus();
  }
  int64_t tokens() const { return tokens_; }

 private:
  std::string path_;
  std::ofstream out_;
  std::optional<Progress> progress_;
  int64_t bytes_ = 0, tokens_ = 0;
};

absl::Status encode_into(const Tokenizer& tokenizer, std::string_view text,
                         const std::string& where, TokenSink& sink) {
  auto ids = tokenizer.encode(text, /*add_special_tokens=*/false);
  if (!ids.ok())
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", ids.status().message()));
  sink.add(*ids);
  return absl::OkStatus();
}

absl::Status encode_text_file(const Tokenizer& tokenizer, const std::string& path,
                              int64_t piece_bytes, TokenSink& sink) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("input ", path, ": cannot open"));
  std::string buffer;
  std::vector<char> chunk(static_cast<size_t>(std::max<int64_t>(piece_bytes, 1)));
  int64_t offset = 0;  // of buffer's start in the file
  bool eof = false;
  while (!eof || !buffer.empty()) {
    if (!eof) {
      in.read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
      buffer.append(chunk.data(), static_cast<size_t>(in.gcount()));
      sink.read_bytes(in.gcount());
      eof = in.eof();
      if (!eof && !in) return absl::DataLossError(absl::StrCat("input ", path, ": read error"));
    }
    // The last "\n" followed by a non-space character in the buffer; the rest waits for more.
    size_t cut = buffer.size();
    if (!eof) {
      cut = 0;
      for (size_t i = buffer.size(); i-- > 1;) {
        if (buffer[i - 1] == '\n' && !is_space(buffer[i])) {
          cut = i;
          break;
        }
      }
      // No cut point yet (a very long line): read on.
      if (cut == 0) continue;
    }
    SY_RETURN_IF_ERROR(encode_into(tokenizer, std::string_view(buffer).substr(0, cut),
                                   absl::StrCat("input ", path, " (bytes from ", offset, ")"),
                                   sink));
    offset += static_cast<int64_t>(cut);
    buffer.erase(0, cut);
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status write_token_shards(const Tokenizer& tokenizer, const TextDataOptions& options,
                                std::ostream* progress) {
  if (options.inputs.empty()) return absl::InvalidArgumentError("--input: no input files given");
  // uint16 shards while the ids fit them (llm.c's GPT-2 layout), else the wide layout.
  const bool wide = tokenizer.vocab_size() > 65536;
  if (options.end_of_document &&
      (*options.end_of_document < 0 || *options.end_of_document >= tokenizer.vocab_size()))
    return absl::InvalidArgumentError(absl::StrCat("--eot: id ", *options.end_of_document,
                                                   " is outside the tokenizer's vocabulary"));
  if (options.tokens_per_shard <= 0 || options.tokens_per_shard > INT32_MAX)
    return absl::InvalidArgumentError(absl::StrCat("--tokens_per_shard: must be in 1..", INT32_MAX,
                                                   ", got ", options.tokens_per_shard));
  int64_t input_bytes = 0;
  for (const std::string& file : options.inputs) {
    std::error_code ec;
    if (!fs::is_regular_file(file, ec))
      return absl::NotFoundError(absl::StrCat("input ", file, ": not a readable file"));
    input_bytes += static_cast<int64_t>(fs::file_size(file, ec));
  }
  std::error_code ec;
  fs::create_directories(options.output_dir, ec);
  if (ec)
    return absl::InvalidArgumentError(
        absl::StrCat("output directory ", options.output_dir, ": ", ec.message()));
  for (const auto& entry : fs::directory_iterator(options.output_dir, ec)) {
    std::string name = entry.path().filename().string();
    if ((name.starts_with("train_") || name.starts_with("val_")) && name.ends_with(".bin"))
      return absl::AlreadyExistsError(absl::StrCat("output directory ", options.output_dir,
                                                   " already holds shards (", name,
                                                   "); remove them or choose another directory"));
  }

  const std::string scratch = (fs::path(options.output_dir) / ".tokens.tmp").string();
  absl::Status status = [&]() -> absl::Status {
    TokenSink sink(scratch, progress, input_bytes);
    if (!sink.ok()) return absl::InvalidArgumentError(absl::StrCat(scratch, ": cannot create"));
    const std::vector<int32_t> eot = options.end_of_document
                                         ? std::vector<int32_t>{*options.end_of_document}
                                         : std::vector<int32_t>{};
    for (const std::string& file : options.inputs) {
      if (file.ends_with(".jsonl")) {
        SY_RETURN_IF_ERROR(for_each_jsonl_object(file, [&](int64_t line, const Json& obj) {
          SY_ASSIGN_OR_RETURN(std::string text, jsonl_string_field(obj, options.field, file, line));
          sink.read_bytes(static_cast<int64_t>(text.size()));
          SY_RETURN_IF_ERROR(encode_into(tokenizer, text, absl::StrCat(file, ":", line), sink));
          sink.add(eot);
          return absl::OkStatus();
        }));
      } else {
        SY_RETURN_IF_ERROR(encode_text_file(tokenizer, file, options.piece_bytes, sink));
        sink.add(eot);
      }
    }
    SY_RETURN_IF_ERROR(sink.close());

    const int64_t total = sink.tokens();
    const int64_t val_tokens = std::max((total + 99) / 100, options.min_val_tokens);
    if (val_tokens >= total)
      return absl::InvalidArgumentError(
          absl::StrCat("the inputs make only ", total, " tokens: too few for a val split of ",
                       val_tokens, " tokens plus training data; add text"));
    std::ifstream in(scratch, std::ios::binary);
    int64_t done = 0;
    int train_index = 0, val_index = 0;
    std::vector<uint16_t> shard;
    std::vector<uint32_t> wide_shard;
    std::vector<int32_t> ids;
    auto write = [&](bool val) -> absl::Status {
      if (shard.empty() && wide_shard.empty()) return absl::OkStatus();
      std::string path =
          (fs::path(options.output_dir) /
           absl::StrFormat("%s_%06d.bin", val ? "val" : "train", val ? val_index++ : train_index++))
              .string();
      if (wide)
        SY_RETURN_IF_ERROR(write_wide_shard(path, wide_shard));
      else
        SY_RETURN_IF_ERROR(write_shard(path, shard));
      shard.clear();
      wide_shard.clear();
      return absl::OkStatus();
    };
    const int64_t train_tokens = total - val_tokens;
    while (done < total) {
      const bool val = done >= train_tokens;
      const int64_t split_end = val ? total : train_tokens;
      const int64_t held = static_cast<int64_t>(wide ? wide_shard.size() : shard.size());
      const int64_t n = std::min<int64_t>(options.tokens_per_shard - held, split_end - done);
      ids.resize(n);
      in.read(reinterpret_cast<char*>(ids.data()), n * static_cast<int64_t>(sizeof(int32_t)));
      if (!in) return absl::DataLossError(absl::StrCat(scratch, ": read back failed"));
      for (int32_t id : ids) {
        if (wide)
          wide_shard.push_back(static_cast<uint32_t>(id));
        else
          shard.push_back(static_cast<uint16_t>(id));
      }
      done += n;
      if (held + n == options.tokens_per_shard || done == split_end) SY_RETURN_IF_ERROR(write(val));
    }
    sink.finish(input_bytes,
                absl::StrCat(" | ", tokenizer.kind(), " tokenizer -> ", train_index, " train and ",
                             val_index, " val shards in ", options.output_dir));
    return absl::OkStatus();
  }();
  fs::remove(scratch, ec);
  return status;
}

}  // namespace sy
