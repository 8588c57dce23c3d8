// Bounded fuzzing of the readers of user files: the experiment config (text format, through
// the loader and validation), a safetensors file's header, and JSON. Each case is a valid
// document mutated at random (byte flips, truncations, insertions, repeated spans, numbers
// swapped for extreme values) from a fixed seed; every case must end in a clean error or a
// valid parse, never a crash, abort or hang (each case is timed). A valid parse is checked
// too: a config that validates gives a memory estimate, a safetensors file that opens reads
// every tensor, a JSON value prints back to the same value.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "rl/rl_config.h"
#include "models/model_spec.h"
#include "tests/testing/small_model.h"
#include "trainer/config.h"
#include "trainer/json.h"
#include "trainer/memory_estimate.h"
#include "trainer/safetensors.h"

namespace sy {
namespace {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// A case that takes longer than this is a hang in the making (they take microseconds).
constexpr double kSlowCaseSeconds = 2.0;

// Numbers that break naive size arithmetic: int32/int64/uint64 edges, overflowing literals,
// the reals text format and JSON accept or refuse.
const char* const kExtremes[] = {"0",
                                 "-1",
                                 "1",
                                 "2147483647",
                                 "-2147483648",
                                 "2147483648",
                                 "4294967296",
                                 "9223372036854775807",
                                 "-9223372036854775808",
                                 "9223372036854775808",
                                 "18446744073709551615",
                                 "18446744073709551616",
                                 "99999999999999999999999999",
                                 "1e308",
                                 "-1e308",
                                 "1e309",
                                 "1e-320",
                                 "inf",
                                 "-inf",
                                 "nan",
                                 "-0",
                                 "0x7fffffff",
                                 "1.5",
                                 "-0.0"};

class Mutator {
 public:
  explicit Mutator(uint64_t seed) : rng_(seed) {}

  size_t below(size_t n) {
    return n == 0 ? 0 : std::uniform_int_distribution<size_t>(0, n - 1)(rng_);
  }

  // One to three mutations of `text`.
  std::string mutate(std::string text) {
    for (size_t n = 1 + below(3); n > 0; --n) mutate_once(text, below(7));
    return text;
  }
  // Only numbers swapped for extreme ones: the text still parses, so validation is tested.
  std::string swap_numbers(std::string text) {
    for (size_t n = 1 + below(3); n > 0; --n) mutate_once(text, 5);
    return text;
  }

 private:
  void mutate_once(std::string& text, size_t kind) {
    const size_t at = below(text.size() + 1);
    switch (kind) {
      case 0:  // flip a bit
        if (!text.empty()) text[below(text.size())] ^= static_cast<char>(1u << below(8));
        break;
      case 1:  // truncate
        text.resize(at);
        break;
      case 2: {  // insert random bytes
        std::string bytes(1 + below(8), '\0');
        for (char& c : bytes) c = static_cast<char>(below(256));
        text.insert(at, bytes);
        break;
      }
      case 3: {  // insert a syntax character the parsers care about
        static const char kPunct[] = "{}[]:,\"\\#\n -.eE+0";
        text.insert(at, 1, kPunct[below(sizeof(kPunct) - 1)]);
        break;
      }
      case 4: {  // repeat a span (a field given twice, a nested copy)
        const size_t len = below(std::min<size_t>(64, text.size() - std::min(at, text.size())) + 1);
        text.insert(at, text.substr(at, len));
        break;
      }
      case 5:
      case 6: {  // swap a number for an extreme one
        std::vector<std::pair<size_t, size_t>> numbers;
        for (size_t i = 0; i < text.size();) {
          if (std::isdigit(static_cast<unsigned char>(text[i]))) {
            size_t j = i;
            while (j < text.size() && (std::isalnum(static_cast<unsigned char>(text[j])) ||
                                       text[j] == '.' || text[j] == '-' || text[j] == '+'))
              ++j;
            numbers.push_back({i, j - i});
            i = j;
          } else {
            ++i;
          }
        }
        if (numbers.empty()) break;
        const auto [begin, len] = numbers[below(numbers.size())];
        text.replace(begin, len, kExtremes[below(std::size(kExtremes))]);
        break;
      }
    }
  }

  std::mt19937_64 rng_;
};

std::string temp_path(const std::string& name) {
  return (fs::path(::testing::TempDir()) / name).string();
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Runs `one_case` for `cases` seeds-worth of mutations and reports how many parsed.
template <typename Case>
int run_cases(int cases, Case one_case) {
  int valid = 0;
  double slowest = 0;
  int slowest_case = -1;
  for (int i = 0; i < cases; ++i) {
    const auto start = Clock::now();
    valid += one_case(i) ? 1 : 0;
    const double s = std::chrono::duration<double>(Clock::now() - start).count();
    if (s > slowest) slowest = s, slowest_case = i;
    if (::testing::Test::HasFatalFailure()) break;
  }
  EXPECT_LT(slowest, kSlowCaseSeconds) << "case " << slowest_case << " took " << slowest << " s";
  return valid;
}

constexpr char kTrainRest[] = R"pb(
  run_dir: "runs/fuzz"
  data { arithmetic { min_digits: 1 max_digits: 2 operators: "+-" eval_examples: 16 } }
  optimizer { lr: 1.5e-3 weight_decay: 0.0 beta2: 0.95 }
  schedule { warmup_steps: 2 decay: DECAY_COSINE min_lr_ratio: 0.1 }
  train { steps: 10 micro_batch: 4 eval_interval: 5 log_interval: 1 cpu_threads: 1 }
  checkpoint { interval: 5 keep_last: 2 }
  rl { temperature: 1.0 top_p: 0.9 group_size: 4 prompts_per_step: 2 max_new_tokens: 8 }
)pb";

constexpr char kRlText[] = R"pb(
  rl {
    init_checkpoint: "runs/tiny"
    algorithm: RL_PPO
    steps: 20
    prompts_per_step: 4
    group_size: 4
    minibatches: 2
    temperature: 0.7
    kl_coef: 0.05
    target_kl: 6
    task: TASK_COUNTDOWN
    countdown { min_count: 3 max_count: 4 max_number: 25 }
  }
  train { cpu_threads: 1 }
)pb";

TEST(Fuzz, ConfigTextIsAParseOrAValidationErrorNeverACrash) {
  const std::string valid_text = absl::StrCat(testing::kSmallModel, kTrainRest);
  const std::string path = temp_path("fuzz_config.textproto");
  write_bytes(path, valid_text);
  ASSERT_TRUE(load_experiment(path, {}).ok()) << load_experiment(path, {}).status();
  write_bytes(path + ".rl", kRlText);
  ASSERT_TRUE(rl::load_rl_config(path + ".rl", {}).ok())
      << rl::load_rl_config(path + ".rl", {}).status();

  Mutator mutator(20261207);
  int errors_with_text = 0, errors = 0;
  const int valid = run_cases(3000, [&](int i) {
    // Cases cycle through: any mutation, numbers only, an RL config (no model, as
    // `switchyard rl` reads it), and the mutations as an override over the valid file.
    const int kind = i % 4;
    const std::string text = kind == 0   ? mutator.mutate(valid_text)
                             : kind == 1 ? mutator.swap_numbers(valid_text)
                                         : mutator.mutate(kRlText);
    absl::StatusOr<switchyard::Experiment> loaded;
    if (kind == 3) {
      loaded = load_experiment(path, {mutator.mutate(kTrainRest)});
    } else {
      write_bytes(path + ".case", text);
      loaded = kind == 2 ? rl::load_rl_config(path + ".case", {}) : load_experiment(path + ".case", {});
    }
    if (!loaded.ok()) {
      ++errors;
      errors_with_text += !loaded.status().message().empty();
      return false;
    }
    if (kind == 2) return true;  // the model is the init checkpoint's
    // A config that validates must describe a model whose size can be estimated in range.
    const ModelSpec spec = model_spec_from_config(*loaded);
    const MemoryEstimate e = estimate_memory(
        spec, {.micro_batch = loaded->train().micro_batch(), .seq_len = spec.seq_len});
    EXPECT_GE(e.total(), 0) << text;
    EXPECT_GE(e.parameters, 0) << text;
    return true;
  });
  EXPECT_EQ(errors_with_text, errors) << "every error says what is wrong";
  // Both outcomes occur, so the mutations neither always break nor never touch the config.
  EXPECT_GT(valid, 30);
  EXPECT_GT(errors, 1000);
}

TEST(Fuzz, SafetensorsHeaderIsAnErrorOrAFileThatReads) {
  const std::string path = temp_path("fuzz_valid.safetensors");
  ASSERT_TRUE(save_safetensors(path,
                               {{"embed.weight", Tensor::from_f32({1, 2, 3, 4, 5, 6}, {2, 3})},
                                {"layers.0.attn.wq", Tensor::from_f32({0.5f, -1.5f}, {2})},
                                {"step", Tensor::from_i32({7}, {1})},
                                {"empty", Tensor::from_f32({}, {0, 4})}},
                               {{"format", "pt"}, {"note", "fuzz"}})
                  .ok());
  const std::string valid_bytes = read_bytes(path);
  uint64_t header_len = 0;
  std::memcpy(&header_len, valid_bytes.data(), 8);
  ASSERT_LT(8 + header_len, valid_bytes.size());
  const std::string header = valid_bytes.substr(8, header_len);
  const std::string data = valid_bytes.substr(8 + header_len);

  Mutator mutator(7);
  const std::string case_path = temp_path("fuzz_case.safetensors");
  const int valid = run_cases(3000, [&](int i) {
    std::string bytes;
    if (i % 10 == 9) {
      // The length prefix itself: an extreme or off-by-some value.
      uint64_t len = header_len;
      const uint64_t choices[] = {0,
                                  1,
                                  7,
                                  header_len - 1,
                                  header_len + 1,
                                  header_len + 8,
                                  uint64_t{1} << 32,
                                  uint64_t{1} << 63,
                                  ~uint64_t{0}};
      len = choices[mutator.below(std::size(choices))];
      bytes.assign(reinterpret_cast<const char*>(&len), 8);
      bytes += header + data;
    } else if (i % 10 == 8) {
      bytes = valid_bytes.substr(0, mutator.below(valid_bytes.size()));  // a truncated file
    } else {
      // A mutated header with its length prefix kept consistent, so the JSON is what is tested;
      // a third of them only with shapes and offsets swapped for extreme numbers.
      const std::string h = i % 3 == 0 ? mutator.swap_numbers(header) : mutator.mutate(header);
      const uint64_t len = h.size();
      bytes.assign(reinterpret_cast<const char*>(&len), 8);
      bytes += h + data;
    }
    write_bytes(case_path, bytes);
    absl::StatusOr<SafetensorsReader> reader = SafetensorsReader::open(case_path);
    absl::StatusOr<SafetensorsFile> loaded = load_safetensors(case_path);
    EXPECT_EQ(reader.ok(), loaded.ok()) << "open and load agree on case " << i;
    if (!reader.ok()) {
      EXPECT_NE(reader.status().message().find(case_path), std::string::npos)
          << "the error names the file: " << reader.status();
      return false;
    }
    for (const std::string& name : reader->names()) {
      absl::StatusOr<Tensor> t = reader->read(name);
      EXPECT_TRUE(t.ok()) << name << ": " << t.status();
      if (t.ok() && !reader->shape(name).empty() && reader->shape(name)[0] > 0) {
        EXPECT_TRUE(reader->read_rows(name, 0, 1).ok()) << name;
      }
    }
    return true;
  });
  EXPECT_GT(valid, 10);
}

// Equality up to NaN-free numbers: JSON numbers round-trip through to_json.
TEST(Fuzz, JsonIsAnErrorOrAValueThatPrintsBackToItself) {
  const std::string valid_text = R"({"name": "run", "tags": ["a", "b\n\"c\"", "\u00e9\ud83d\ude00"],
    "step": 120, "loss": 2.314e+00, "lr": -3.0E-4, "nested": {"deep": [[1, 2], [3, [4, {"x": null}]]],
    "flag": true, "off": false}, "empty": {}, "none": [], "big": 9007199254740993,
    "neg": -9223372036854775808, "frac": 0.1})";
  ASSERT_TRUE(parse_json(valid_text).ok());

  Mutator mutator(42);
  const int valid = run_cases(6000, [&](int i) {
    const std::string text =
        i % 3 == 0 ? mutator.swap_numbers(valid_text) : mutator.mutate(valid_text);
    absl::StatusOr<Json> parsed = parse_json(text);
    if (!parsed.ok()) {
      EXPECT_NE(parsed.status().message().find("JSON error at byte"), std::string::npos)
          << parsed.status();
      return false;
    }
    const std::string printed = to_json(*parsed);
    absl::StatusOr<Json> again = parse_json(printed);
    EXPECT_TRUE(again.ok()) << printed << ": " << again.status();
    if (again.ok()) EXPECT_TRUE(*again == *parsed) << text << "\nprinted as\n" << printed;
    return true;
  });
  EXPECT_GT(valid, 100);

  // Hostile shapes no random mutation is likely to reach: deep nesting, long runs.
  for (const std::string& text :
       {std::string(100000, '['), std::string(100000, '{'),
        std::string("[") + std::string(1 << 20, '1') + "]",
        absl::StrCat("\"", std::string(1 << 20, 'a'), "\""), std::string("\"\\ud800\""),
        std::string("1e999999999"), std::string("-"), std::string("\"\\u12\""),
        std::string(1 << 16, ' ')}) {
    const auto start = Clock::now();
    absl::StatusOr<Json> parsed = parse_json(text);
    EXPECT_LT(std::chrono::duration<double>(Clock::now() - start).count(), kSlowCaseSeconds);
    if (parsed.ok()) EXPECT_TRUE(parse_json(to_json(*parsed)).ok()) << text.substr(0, 40);
  }
}

}  // namespace
}  // namespace sy
