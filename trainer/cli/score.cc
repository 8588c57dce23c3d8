// `switchyard score --checkpoint RUN_DIR --input IN.jsonl --output OUT.jsonl`: for each line's
// text, the run's tokenizer's ids (encoded with add_special_tokens, so only what the
// post-processor adds, e.g. Llama-3's BOS, is added) and the log-prob of every token after the
// first given those before it. Perplexity evaluation, and how anyone checks an imported model
// against the one it came from.
#include "trainer/cli/score.h"

#include <cmath>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "models/model_spec.h"
#include "models/transformer.h"
#include "parallel/local_communicator.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/data/jsonl.h"
#include "trainer/data/tokenizer.h"
#include "trainer/flags.h"
#include "trainer/json.h"
#include "trainer/progress.h"
#include "trainer/train.h"

namespace sy {
namespace {
namespace fs = std::filesystem;

struct Line {
  Json fields;
  std::vector<int32_t> ids;
};

}  // namespace

absl::Status run_score_command(const std::vector<std::string>& args, std::ostream& out) {
  FlagSet flags("switchyard score", "--checkpoint RUN_DIR --input IN.jsonl --output OUT.jsonl",
                "Scores texts with the latest checkpoint of a run: each --input line (a JSON\n"
                "object with a --field string) is written to --output with \"token_ids\" (the\n"
                "run's tokenizer's ids), \"logprobs\" (log p of each token after the first, given\n"
                "those before it) and \"total_logprob\" (their sum) added.");
  std::string run_dir, input, output, field = "text";
  std::vector<std::string> overrides;
  flags.add_string("checkpoint", "RUN_DIR", &run_dir, "a run directory (its latest checkpoint)");
  flags.add_string("input", "IN.jsonl", &input, "one JSON object a line with a text field");
  flags.add_string("output", "OUT.jsonl", &output, "where the scored lines go");
  flags.add_string("field", "NAME", &field, "the text field of each line");
  flags.add_strings("set", "TEXT", &overrides,
                    "override a field of the run's config (e.g. device)");
  SY_RETURN_IF_ERROR(flags.parse(args));
  if (flags.help_requested()) {
    out << flags.help();
    return absl::OkStatus();
  }
  SY_RETURN_IF_ERROR(flags.require("checkpoint"));
  SY_RETURN_IF_ERROR(flags.require("input"));
  SY_RETURN_IF_ERROR(flags.require("output"));
  const std::string saved = (fs::path(run_dir) / "config.textproto").string();
  if (!fs::exists(saved))
    return absl::NotFoundError(absl::StrCat("--checkpoint ", run_dir,
                                            ": no config.textproto there; is it a run directory?"));
  SY_ASSIGN_OR_RETURN(switchyard::Experiment config, load_experiment(saved, overrides));
  auto tokenizer = load_tokenizer(run_dir);
  if (!tokenizer.ok())
    return absl::InvalidArgumentError(absl::StrCat("--checkpoint: ", tokenizer.status().message()));
  const ModelSpec spec = model_spec_from_config(config);

  // Every line is read and checked before the model loads, so a bad line costs nothing.
  std::vector<Line> lines;
  SY_RETURN_IF_ERROR(
      for_each_jsonl_object(input, [&](int64_t number, const Json& obj) -> absl::Status {
        SY_ASSIGN_OR_RETURN(std::string text, jsonl_string_field(obj, field, input, number));
        auto ids = (*tokenizer)->encode(text, /*add_special_tokens=*/true);
        if (!ids.ok())
          return absl::InvalidArgumentError(absl::StrCat(input, ":", number, ": field \"", field,
                                                         "\": ", ids.status().message()));
        for (int32_t id : *ids)
          if (id >= spec.vocab_size)
            return absl::InvalidArgumentError(absl::StrCat(input, ":", number, ": token ", id,
                                                           " is outside the model's vocabulary of ",
                                                           spec.vocab_size));
        if (static_cast<int64_t>(ids->size()) > spec.seq_len)
          return absl::InvalidArgumentError(
              absl::StrCat(input, ":", number, ": the text is ", ids->size(),
                           " tokens, longer than the model's context (model.seq_len ", spec.seq_len,
                           "); split it"));
        lines.push_back({obj, *std::move(ids)});
        return absl::OkStatus();
      }));
  std::ofstream sink(output);
  if (!sink)
    return absl::PermissionDeniedError(absl::StrCat("--output ", output, ": cannot write it"));

  LocalCommunicator alone;
  SY_ASSIGN_OR_RETURN(const Device device, choose_device(config, alone));
  SY_ASSIGN_OR_RETURN(const DType compute, choose_precision(config, device));
  ParamStore store(device, compute);
  Transformer model(spec, store);
  SY_ASSIGN_OR_RETURN(std::string dir, latest_checkpoint(run_dir));
  // This process holds every expert: an expert-parallel checkpoint's shards are joined. The
  // scores go to --output, so `out` is free for progress.
  SY_RETURN_IF_ERROR(load_checkpoint(dir, store, nullptr, {.expert_parallel = 1}, &out).status());

  Progress progress(out, "score", static_cast<int64_t>(lines.size()), "texts", is_terminal(out));
  progress.count_also("tokens", "tok/s");
  int64_t tokens = 0, done = 0;
  double total = 0;
  for (Line& line : lines) {
    const int64_t n = static_cast<int64_t>(line.ids.size());
    Json::Array ids, logprobs;
    for (int32_t id : line.ids) ids.emplace_back(id);
    double sum = 0;
    if (n >= 2) {
      const std::vector<int32_t> inputs(line.ids.begin(), line.ids.end() - 1);
      const std::vector<int32_t> targets(line.ids.begin() + 1, line.ids.end());
      const Tensor logp = model
                              .token_logprobs(Tensor::from_i32(inputs, {1, n - 1}),
                                              Tensor::from_i32(targets, {1, n - 1}))
                              .logp;
      for (float lp : logp.to_f32_vector()) {
        sum += lp;
        // The float's shortest decimal form, not the 17 digits of its double.
        logprobs.emplace_back(std::stod(absl::StrFormat("%.9g", lp)));
      }
    }
    line.fields.set("token_ids", std::move(ids));
    line.fields.set("logprobs", std::move(logprobs));
    line.fields.set("total_logprob", sum);
    sink << to_json(line.fields) << "\n";
    tokens += std::max<int64_t>(n - 1, 0);
    total += sum;
    progress.update(++done, tokens);
  }
  sink.flush();
  if (!sink) return absl::DataLossError(absl::StrCat("--output ", output, ": write failed"));
  // The scored tokens are those after each text's first.
  progress.finish(done, tokens,
                  absl::StrFormat(" | mean log-prob %.4f, perplexity %.3f -> %s",
                                  tokens > 0 ? total / tokens : 0.0,
                                  tokens > 0 ? std::exp(-total / tokens) : 1.0, output));
  return absl::OkStatus();
}

}  // namespace sy
