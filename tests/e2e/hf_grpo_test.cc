// Bring your own model, tokenizer and data, end to end (CPU, in-process commands): import the
// tiny Qwen3-MoE fixture of tests/data/hf with a tokenizer.json beside it, fine-tune it with a
// few GRPO steps on a JSONL prompt set (tests/data/prompts) scored by the math verifier, export
// the result, and check the exported directory is what transformers expects: the input's
// config.json fields and tensor names, the tokenizer files copied. It proves the path works,
// not that the model learns.
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "rl/rl_command.h"
#include "trainer/data/tokenizer.h"
#include "trainer/io/hf_checkpoint.h"
#include "trainer/json.h"
#include "trainer/safetensors.h"

namespace sy {
namespace {
namespace fs = std::filesystem;

std::string source(const std::string& path) {
  return std::string(SWITCHYARD_SOURCE_DIR) + "/" + path;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

Json read_json(const std::string& path) {
  auto j = parse_json(read_text(path));
  SY_CHECK(j.ok()) << path << ": " << j.status();
  return *std::move(j);
}

// Every tensor name of a Hub directory (one file or an index of shards).
std::set<std::string> tensor_names(const std::string& dir) {
  std::set<std::string> names;
  if (fs::exists(dir + "/model.safetensors.index.json")) {
    const Json index = read_json(dir + "/model.safetensors.index.json");
    for (const auto& [name, file] : index.find("weight_map")->as_object()) {
      names.insert(name);
      EXPECT_TRUE(fs::exists(dir + "/" + file.as_string())) << file.as_string();
    }
  } else {
    auto reader = SafetensorsReader::open(dir + "/model.safetensors");
    SY_CHECK(reader.ok()) << reader.status();
    for (const std::string& n : reader->names()) names.insert(n);
  }
  return names;
}

TEST(HfGrpoEndToEnd, ImportFineTuneWithGrpoOnJsonlPromptsAndExport) {
  const std::string root = ::testing::TempDir() + "/hf_grpo_e2e";
  fs::remove_all(root);
  fs::create_directories(root);
  const std::string hf = root + "/hf", run = root + "/run", rl_run = root + "/rl",
                    out = root + "/export";
  fs::copy(source("tests/data/hf/qwen3_moe"), hf, fs::copy_options::recursive);
  fs::remove(hf + "/reference.safetensors");  // the fixture's logits, not part of a model
  for (const char* f : {"tokenizer.json", "generation_config.json"})
    fs::copy_file(source(std::string("tests/data/tokenizers/qwen2_tiny/") + f), hf + "/" + f,
                  fs::copy_options::overwrite_existing);

  std::ostringstream log;
  absl::Status s = run_convert_command({"--input", hf, "--output", run}, log);
  ASSERT_TRUE(s.ok()) << s << "\n" << log.str();
  EXPECT_EQ(read_text(run + "/tokenizer.json"), read_text(hf + "/tokenizer.json"));
  auto tokenizer = load_tokenizer(run);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ((*tokenizer)->kind(), "bpe");
  EXPECT_EQ((*tokenizer)->eos_ids(),
            std::vector<int32_t>{*(*tokenizer)->token_to_id("<|im_end|>")});

  const std::string config = root + "/grpo.textproto";
  // Paths are quoted by hand: a raw string's line breaks would land inside them.
  auto quoted = [](const std::string& path) { return absl::StrCat("\"", path, "\""); };
  std::ofstream(config) << absl::StrCat(
      "device: DEVICE_CPU\n"
      "train { cpu_threads: 2 }\n"
      "rl {\n"
      "  init_checkpoint: ", quoted(run), "\n"
      "  algorithm: RL_GRPO steps: 3 prompts_per_step: 2 group_size: 4 lr: 1e-4\n"
      "  temperature: 1.0 max_new_tokens: 12 eval_examples: 4 task: TASK_MATH\n"
      "  prompt_template: \"<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n\"\n"
      "  prompt_file {\n"
      "    train_file: ", quoted(source("tests/data/prompts/word_problems_train.jsonl")), "\n"
      "    eval_file: ", quoted(source("tests/data/prompts/word_problems_eval.jsonl")), "\n"
      "    prompt_field: \"question\" answer_field: \"answer\"\n"
      "  }\n"
      "}\n");
  s = run_rl_command({"--config", config, "--run_dir", rl_run}, log);
  ASSERT_TRUE(s.ok()) << s << "\n" << log.str();
  // Three steps logged, each with a finite reward in [0, 1].
  std::ifstream metrics(rl_run + "/metrics.jsonl");
  int steps = 0;
  for (std::string line; std::getline(metrics, line);) {
    auto j = parse_json(line);
    ASSERT_TRUE(j.ok()) << line;
    if (const Json* r = j->find("reward_mean"); r != nullptr && r->is_number()) {
      ++steps;
      EXPECT_GE(r->as_double(), 0.0);
      EXPECT_LE(r->as_double(), 1.0);
    }
  }
  EXPECT_EQ(steps, 3) << log.str();
  EXPECT_EQ(read_text(rl_run + "/tokenizer.json"), read_text(hf + "/tokenizer.json"));

  s = run_convert_command({"--input", rl_run, "--output", out, "--dtype", "f32"}, log);
  ASSERT_TRUE(s.ok()) << s << "\n" << log.str();
  const Json in_config = read_json(hf + "/config.json"),
             out_config = read_json(out + "/config.json");
  for (const char* field :
       {"architectures", "model_type", "hidden_size", "intermediate_size", "moe_intermediate_size",
        "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
        "num_experts_per_tok", "norm_topk_prob", "vocab_size", "rms_norm_eps",
        "tie_word_embeddings"}) {
    const Json* want = in_config.find(field);
    const Json* got = out_config.find(field);
    ASSERT_NE(want, nullptr) << field;
    ASSERT_NE(got, nullptr) << "exported config.json lacks " << field;
    if (want->is_number())
      EXPECT_DOUBLE_EQ(got->as_double(), want->as_double()) << field;
    else
      EXPECT_EQ(*got, *want) << field;
  }
  EXPECT_EQ(tensor_names(out), tensor_names(hf));
  EXPECT_EQ(read_text(out + "/tokenizer.json"), read_text(hf + "/tokenizer.json"));
}

}  // namespace
}  // namespace sy
