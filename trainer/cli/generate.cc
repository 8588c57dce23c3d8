// `switchyard generate`: completions from a run's latest checkpoint, for one --prompt (printed)
// or a JSONL file of prompts (--prompts IN --output OUT, one object a line with "prompt"; each
// output line keeps the input's fields and adds "completion", "token_ids", "logprobs" and
// "finish_reason").
//
// The rollout engine (models/rollout/engine.h) decodes up to --batch_size prompts at once.
// Sampling is a function of (--seed, the prompt's index in the file, the token's position), so
// a prompt's completion does not depend on --batch_size. finish_reason is the engine's:
// "stop_token", "max_new_tokens" or "context" (prompt + completion reach model.seq_len + 1
// tokens: the model has read seq_len positions).
// logprobs[i] is log p(token_ids[i]) under softmax(logits / temperature) (temperature 1 when
// greedy), before any top-k / top-p / min-p cut: what RL calls the behaviour log-prob.
#include "models/generate.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "models/model_spec.h"
#include "models/transformer.h"
#include "parallel/local_communicator.h"
#include "trainer/checkpoint.h"
#include "trainer/commands.h"
#include "trainer/config.h"
#include "trainer/data/prompt_template.h"
#include "trainer/data/tokenizer.h"
#include "trainer/json.h"
#include "trainer/memory_estimate.h"
#include "trainer/progress.h"
#include "trainer/regular_file.h"
#include "trainer/train.h"

namespace sy {
namespace {
namespace fs = std::filesystem;

// A number flag given as text (FlagSet has no float flags): finite, and inside the range
// `ok` accepts, else an error that says what to give.
absl::Status parse_number(const std::string& flag, const std::string& text, const char* want,
                          bool (*ok)(float), float* out) {
  float v = 0;
  if (!absl::SimpleAtof(text, &v) || !std::isfinite(v) || !ok(v)) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, " ", text, ": give ", want));
  }
  *out = v;
  return absl::OkStatus();
}

// One prompt of the input: where it came from, its JSON object, its ids.
struct PromptRecord {
  std::string where;  // "FILE:LINE", or "--prompt"
  Json fields;        // the input line's object (null for --prompt)
  std::vector<int32_t> ids;
};

// The ids of `text`, checked against the model: inside its vocabulary and its context.
// The prompt goes through --prompt_template, and the tokenizer's post-processor (e.g. Llama-3's
// BOS) is applied, as RL rollouts encode their prompts.
absl::StatusOr<std::vector<int32_t>> encode_prompt(const std::string& where,
                                                   const std::string& text,
                                                   const Tokenizer& tokenizer,
                                                   const ModelSpec& spec,
                                                   const PromptTemplate& prompt_template) {
  if (text.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": the prompt is empty"));
  }
  auto ids = tokenizer.encode(prompt_template.apply(text), /*add_special_tokens=*/true);
  if (!ids.ok())
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", ids.status().message()));
  for (int32_t id : *ids) {
    if (id >= spec.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": ", tokenizer.kind() == "bytes" ? "byte " : "token id ", id,
                       " is outside the model's vocabulary of ", spec.vocab_size));
    }
  }
  // The rollout engine's rule: the model reads at most seq_len positions, and the token
  // sampled from the last of them is never read back.
  if (static_cast<int64_t>(ids->size()) > spec.seq_len) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": the prompt is ", ids->size(), " tokens, longer than the model's context ",
        "(model.seq_len) of ", spec.seq_len, "; shorten it"));
  }
  return ids;
}

// The prompts of a JSONL file: one object a line with a non-empty "prompt" string (blank
// lines are skipped). Errors name the file and line.
absl::StatusOr<std::vector<PromptRecord>> read_prompts(const std::string& path,
                                                       const Tokenizer& tokenizer,
                                                       const ModelSpec& spec,
                                                       const PromptTemplate& prompt_template) {
  std::error_code exists_error;  // a FIFO would block the read forever
  if (std::filesystem::exists(path, exists_error))
    SY_RETURN_IF_ERROR(require_regular_file(path, "--prompts"));
  std::ifstream in(path);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("--prompts ", path, ": cannot open it"));
  }
  std::vector<PromptRecord> out;
  int64_t line_no = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = absl::StrCat(path, ":", line_no);
    auto json = parse_json(line);
    if (!json.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": not a JSON object (", json.status().message(), ")"));
    }
    const Json* prompt = json->is_object() ? json->find("prompt") : nullptr;
    if (prompt == nullptr || !prompt->is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": needs a \"prompt\" string, as in {\"prompt\": \"47+38=\"}"));
    }
    SY_ASSIGN_OR_RETURN(std::vector<int32_t> ids, encode_prompt(where, prompt->as_string(),
                                                                tokenizer, spec, prompt_template));
    out.push_back({where, std::move(*json), std::move(ids)});
  }
  if (out.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--prompts ", path,
                     ": no prompts; give one JSON object a line, as in {\"prompt\": \"47+38=\"}"));
  }
  return out;
}

// Completions of prompts [first, first + n) on the rollout engine, at most `batch_size` rows
// decoded at once. A KV pool too large for the GPU is an error naming the largest batch
// that fits, said in terms of --batch_size.
absl::StatusOr<std::vector<Completion>> complete(Transformer& model,
                                                 const std::vector<PromptRecord>& prompts,
                                                 int64_t first, int64_t n,
                                                 const SamplingOptions& options,
                                                 int64_t batch_size) {
  std::vector<std::vector<int32_t>> ids;
  for (int64_t i = first; i < first + n; ++i) ids.push_back(prompts[i].ids);
  auto out = generate_completions(model, ids, options, nullptr, static_cast<uint64_t>(first),
                                  {.max_rows = batch_size});
  if (absl::IsResourceExhausted(out.status())) {
    return absl::Status(out.status().code(),
                        absl::StrCat("--batch_size ", batch_size, ": ", out.status().message()));
  }
  return out;
}

// The text of completion ids; ids past the tokenizer's vocabulary (a model's vocabulary may
// be larger) become U+FFFD, like undecodable bytes.
std::string completion_text(const Tokenizer& tokenizer, const std::vector<int32_t>& ids) {
  std::string text;
  size_t start = 0;
  auto flush = [&](size_t end) {
    if (end == start) return;
    auto piece = tokenizer.decode(std::span<const int32_t>(ids.data() + start, end - start));
    text += piece.ok() ? *piece : "\xEF\xBF\xBD";
  };
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] >= 0 && ids[i] < tokenizer.vocab_size()) continue;
    flush(i);
    text += "\xEF\xBF\xBD";
    start = i + 1;
  }
  flush(ids.size());
  return text;
}

}  // namespace

absl::Status run_generate_command(const std::vector<std::string>& args, std::ostream& out) {
  FlagSet flags("switchyard generate",
                "--checkpoint RUN_DIR (--prompt TEXT | --prompts IN.jsonl --output OUT.jsonl) "
                "[sampling flags]",
                "Loads the latest checkpoint of a run and continues prompts with the run's\n"
                "tokenizer. --prompt prints one continuation; --prompts reads one JSON object a\n"
                "line with a \"prompt\" string and writes each line back to --output with\n"
                "\"completion\", \"token_ids\", \"logprobs\" and \"finish_reason\" added.\n"
                "Temperature 0 is greedy decoding; a completion ends at the tokenizer's\n"
                "end-of-sequence ids (a newline for the byte tokenizer) unless\n"
                "--stop_at_eos=false.");
  std::string run_dir, prompt, prompts_path, output_path;
  std::string temperature = "0", top_p = "1", min_p = "0";
  std::vector<std::string> overrides;
  int64_t max_new = 32, top_k = 0, seed = 0, batch_size = 16;
  bool stop_at_eos = true;
  flags.add_string("checkpoint", "RUN_DIR", &run_dir, "a run directory (its latest checkpoint)");
  flags.add_string("prompt", "TEXT", &prompt, "the text to continue");
  flags.add_string("prompts", "IN.jsonl", &prompts_path,
                   "one JSON object a line with a \"prompt\" string");
  flags.add_string("output", "OUT.jsonl", &output_path, "where --prompts' completions go");
  flags.add_int("max_new_tokens", "N", &max_new, "at most this many new tokens");
  flags.add_string("temperature", "T", &temperature, "sampling temperature; 0 = greedy");
  flags.add_int("top_k", "K", &top_k, "sample among the K likeliest tokens; 0 = all");
  flags.add_string("top_p", "P", &top_p, "sample within the smallest set of probability >= P");
  flags.add_string("min_p", "P", &min_p,
                   "drop tokens less likely than P times the likeliest; 0 = none");
  flags.add_int("seed", "S", &seed, "sampling seed");
  flags.add_int("batch_size", "B", &batch_size, "prompts decoded together (--prompts)");
  flags.add_bool("stop_at_eos", &stop_at_eos, "end a completion at an end-of-sequence id");
  std::string template_text = "{prompt}";
  flags.add_string("prompt_template", "TEXT", &template_text,
                   "how each prompt is shown to the model, {prompt} standing for it; default: "
                   "the run's rl.prompt_template (an RL run's prompts look as in training), "
                   "else {prompt}");
  flags.add_strings("set", "TEXT", &overrides,
                    "override a field of the run's config (e.g. device)");
  SY_RETURN_IF_ERROR(flags.parse(args));
  if (flags.help_requested()) {
    out << flags.help();
    return absl::OkStatus();
  }
  SY_RETURN_IF_ERROR(flags.require("checkpoint"));
  const bool from_file = flags.was_given("prompts");
  if (from_file == flags.was_given("prompt")) {
    return absl::InvalidArgumentError("give either --prompt TEXT or --prompts IN.jsonl");
  }
  if (from_file) SY_RETURN_IF_ERROR(flags.require("output"));
  if (!from_file && flags.was_given("output")) {
    return absl::InvalidArgumentError("--output goes with --prompts; --prompt prints its result");
  }
  SamplingOptions options;
  SY_RETURN_IF_ERROR(parse_number(
      "temperature", temperature, "a number >= 0", [](float v) { return v >= 0; },
      &options.temperature));
  SY_RETURN_IF_ERROR(parse_number(
      "top_p", top_p, "a number in (0, 1]", [](float v) { return v > 0 && v <= 1; },
      &options.top_p));
  SY_RETURN_IF_ERROR(parse_number(
      "min_p", min_p, "a number in [0, 1)", [](float v) { return v >= 0 && v < 1; },
      &options.min_p));
  if (max_new <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max_new_tokens ", max_new, ": give a number >= 1"));
  }
  if (top_k < 0) {
    return absl::InvalidArgumentError(absl::StrCat("--top_k ", top_k, ": give 0 (all) or more"));
  }
  if (batch_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--batch_size ", batch_size, ": give a number >= 1"));
  }
  // Any K past the vocabulary keeps every token; the sampler takes an int32.
  options.sampling_top_k = static_cast<int>(std::min<int64_t>(top_k, INT32_MAX));
  options.seed = static_cast<uint64_t>(seed);

  const std::string saved = (fs::path(run_dir) / "config.textproto").string();
  if (!fs::exists(saved)) {
    return absl::NotFoundError(absl::StrCat("--checkpoint ", run_dir,
                                            ": no config.textproto there; is it a run directory?"));
  }
  SY_ASSIGN_OR_RETURN(switchyard::Experiment config, load_experiment(saved, overrides));
  if (!flags.was_given("prompt_template") && config.has_rl() &&
      config.rl().has_prompt_template()) {
    template_text = config.rl().prompt_template();
  }
  SY_ASSIGN_OR_RETURN(const PromptTemplate prompt_template,
                      PromptTemplate::parse(template_text, "--prompt_template"));
  SY_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer, load_tokenizer(run_dir));
  if (stop_at_eos) options.stop_tokens = tokenizer->eos_ids();
  const ModelSpec spec = model_spec_from_config(config);
  // A completion ends at the model's context whatever is asked (prompt + completion reach
  // seq_len + 1 tokens, see encode_prompt), so a larger cap only misleads: cap it, and say so
  // when the user asked for it (the default is no request).
  if (max_new > spec.seq_len) {
    if (flags.was_given("max_new_tokens")) {
      std::cerr << "generate: --max_new_tokens " << max_new << " is more than the model's "
                << "context (model.seq_len) of " << spec.seq_len << " tokens; completions end "
                << "there, at most " << spec.seq_len << " new tokens\n";
    }
    max_new = spec.seq_len;
  }
  options.max_new_tokens = static_cast<int>(max_new);

  std::vector<PromptRecord> prompts;
  if (from_file) {
    SY_ASSIGN_OR_RETURN(prompts, read_prompts(prompts_path, *tokenizer, spec, prompt_template));
  } else {
    SY_ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                        encode_prompt("--prompt", prompt, *tokenizer, spec, prompt_template));
    prompts.push_back({"--prompt", Json(), std::move(ids)});
  }
  std::ofstream output;
  if (from_file) {
    output.open(output_path);
    if (!output) {
      return absl::PermissionDeniedError(
          absl::StrCat("--output ", output_path, ": cannot write it"));
    }
  }

  LocalCommunicator alone;
  SY_ASSIGN_OR_RETURN(const Device device, choose_device(config, alone));
  SY_ASSIGN_OR_RETURN(const DType compute, choose_precision(config, device));
  // The run trained somewhere; this machine may be smaller.
  SY_RETURN_IF_ERROR(check_memory_for(spec, {.training = false, .compute = compute}, device,
                                      "loading this model"));
  ParamStore store(device, compute);
  Transformer model(spec, store);
  SY_ASSIGN_OR_RETURN(std::string dir, latest_checkpoint(run_dir));
  // This process holds every expert: an expert-parallel checkpoint's shards are joined. A
  // single --prompt prints its completion alone (a pipe's input); --prompts shows progress.
  SY_RETURN_IF_ERROR(load_checkpoint(dir, store, nullptr, {.expert_parallel = 1},
                                     from_file ? &std::cerr : nullptr)
                         .status());

  if (!from_file) {
    SY_ASSIGN_OR_RETURN(const std::vector<Completion> done,
                        complete(model, prompts, 0, 1, options, batch_size));
    const std::string text = completion_text(*tokenizer, done[0].tokens);
    out << prompt << text;
    if (text.empty() || text.back() != '\n') out << "\n";
    return absl::OkStatus();
  }
  const int64_t total = static_cast<int64_t>(prompts.size());
  // On stderr: stdout is --prompt's answer, and a terminal shows the line either way.
  Progress progress(std::cerr, "generate", total, "prompts", is_terminal(std::cerr));
  progress.count_also("new tokens", "tok/s");
  int64_t tokens = 0;
  // Several batches' worth a call keeps the engine's slots busy (a finished row's slot takes
  // the next prompt) while the progress line still moves.
  const int64_t chunk = 8 * batch_size;
  for (int64_t first = 0; first < total; first += chunk) {
    const int64_t n = std::min(chunk, total - first);
    SY_ASSIGN_OR_RETURN(const std::vector<Completion> done,
                        complete(model, prompts, first, n, options, batch_size));
    for (int64_t r = 0; r < n; ++r) {
      const auto& c = done[r];
      Json line = prompts[first + r].fields;
      Json::Array ids, logprobs;
      for (int32_t id : c.tokens) ids.emplace_back(id);
      // The float's shortest decimal form, not the 17 digits of its double.
      for (float lp : c.logprobs) logprobs.emplace_back(std::stod(absl::StrFormat("%.9g", lp)));
      line.set("completion", completion_text(*tokenizer, c.tokens));
      line.set("token_ids", std::move(ids));
      line.set("logprobs", std::move(logprobs));
      line.set("finish_reason", finish_reason_name(c.finish));
      output << to_json(line) << "\n";
      tokens += static_cast<int64_t>(c.tokens.size());
    }
    output.flush();
    if (!output) {
      return absl::DataLossError(absl::StrCat("--output ", output_path, ": write failed"));
    }
    progress.update(first + n, tokens);
  }
  progress.finish(total, tokens, absl::StrCat(" -> ", output_path));
  return absl::OkStatus();
}

}  // namespace sy
