// TensorBoard event files: CRC-32C against published check values, and a whole training run's
// file read back record by record, its framing and CRCs checked and each Event decoded with
// protobuf's schema-less parser (UnknownFieldSet), independently of the writer's encoder.
#include "trainer/tensorboard.h"

#include <cstring>
#include <filesystem>
#include <map>
#include <sstream>

#include "google/protobuf/text_format.h"
#include "google/protobuf/unknown_field_set.h"
#include "gtest/gtest.h"
#include "tests/testing/small_model.h"
#include "tests/testing/testing.h"
#include "trainer/config.h"
#include "trainer/train.h"

namespace sy {
namespace {
namespace fs = std::filesystem;
using google::protobuf::UnknownField;
using google::protobuf::UnknownFieldSet;

TEST(TensorBoard, Crc32cMatchesPublishedCheckValues) {
  // RFC 3720 (iSCSI) B.4 and the usual "123456789" check value of CRC-32C.
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);
  const std::string zeros(32, '\0'), ones(32, '\xff');
  EXPECT_EQ(crc32c(zeros.data(), 32), 0x8A9136AAu);
  EXPECT_EQ(crc32c(ones.data(), 32), 0x62A8AB43u);
  const uint32_t c = crc32c("123456789", 9);
  EXPECT_EQ(masked_crc32c("123456789", 9), ((c >> 15) | (c << 17)) + 0xA282EAD8u);
}

struct Event {
  int64_t step = -1;
  double wall_time = 0;
  std::string file_version;
  std::map<std::string, float> scalars;
};

// Reads every record, checking both CRCs, and decodes each Event.
std::vector<Event> read_events(const std::string& path) {
  const std::string bytes = testing::read_bytes(path);
  std::vector<Event> events;
  size_t at = 0;
  while (at < bytes.size()) {
    uint64_t length = 0;
    uint32_t length_crc = 0, data_crc = 0;
    EXPECT_LE(at + 12, bytes.size());
    std::memcpy(&length, bytes.data() + at, 8);
    std::memcpy(&length_crc, bytes.data() + at + 8, 4);
    EXPECT_EQ(length_crc, masked_crc32c(bytes.data() + at, 8)) << "at byte " << at;
    const std::string data = bytes.substr(at + 12, length);
    std::memcpy(&data_crc, bytes.data() + at + 12 + length, 4);
    EXPECT_EQ(data_crc, masked_crc32c(data.data(), data.size())) << "at byte " << at;
    at += 12 + length + 4;

    UnknownFieldSet fields;
    EXPECT_TRUE(fields.ParseFromString(data));
    Event e;
    for (int i = 0; i < fields.field_count(); ++i) {
      const UnknownField& f = fields.field(i);
      if (f.number() == 1 && f.type() == UnknownField::TYPE_FIXED64) {
        const uint64_t raw = f.fixed64();
        std::memcpy(&e.wall_time, &raw, 8);
      } else if (f.number() == 2 && f.type() == UnknownField::TYPE_VARINT) {
        e.step = static_cast<int64_t>(f.varint());
      } else if (f.number() == 3 && f.type() == UnknownField::TYPE_LENGTH_DELIMITED) {
        e.file_version = f.length_delimited();
      } else if (f.number() == 5 && f.type() == UnknownField::TYPE_LENGTH_DELIMITED) {
        UnknownFieldSet summary, value;
        EXPECT_TRUE(summary.ParseFromString(f.length_delimited()));
        for (int j = 0; j < summary.field_count(); ++j) {
          EXPECT_EQ(summary.field(j).number(), 1);
          EXPECT_TRUE(value.ParseFromString(summary.field(j).length_delimited()));
          std::string tag;
          float simple = NAN;
          for (int k = 0; k < value.field_count(); ++k) {
            const UnknownField& v = value.field(k);
            if (v.number() == 1) tag = v.length_delimited();
            if (v.number() == 2 && v.type() == UnknownField::TYPE_FIXED32) {
              const uint32_t raw = v.fixed32();
              std::memcpy(&simple, &raw, 4);
            }
          }
          e.scalars[tag] = simple;
          value.Clear();
        }
      } else {
        ADD_FAILURE() << "unexpected Event field " << f.number();
      }
    }
    events.push_back(e);
  }
  return events;
}

TEST(TensorBoard, TrainingWritesEveryMetricAsAScalarPerStep) {
  switchyard::Experiment config;
  ASSERT_TRUE(google::protobuf::TextFormat::ParseFromString(
      std::string(testing::kSmallModel) + R"pb(
        data { arithmetic { min_digits: 1 max_digits: 1 operators: "+" eval_examples: 8 } }
        schedule { warmup_steps: 1 }
        train { steps: 4 micro_batch: 4 eval_interval: 2 }
        checkpoint { interval: 0 }
        logging { tensorboard: true }
      )pb",
      &config));
  ASSERT_TRUE(validate_experiment(config).ok());
  const std::string dir = testing::fresh_test_dir("tensorboard_test");
  std::ostringstream log;
  ASSERT_TRUE(train(config, {.run_dir = dir}, log).ok()) << log.str();

  std::string path;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().filename().string().starts_with("events.out.tfevents.")) path = entry.path();
  }
  ASSERT_FALSE(path.empty()) << "no event file in " << dir;
  const std::vector<Event> events = read_events(path);
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events[0].file_version, "brain.Event:2");
  EXPECT_GT(events[0].wall_time, 1.7e9);  // seconds since 1970: after 2023

  // The same numbers as metrics.jsonl: one loss per step, evals at steps 2 and 4.
  std::map<int64_t, std::map<std::string, float>> by_step;
  for (size_t i = 1; i < events.size(); ++i)
    for (const auto& [tag, v] : events[i].scalars) by_step[events[i].step][tag] = v;
  for (int64_t step = 1; step <= 4; ++step) {
    for (const char* tag :
         {"loss", "lm_loss", "lr", "grad_norm", "tokens_per_s", "peak_rss_gib", "time_left_s"})
      EXPECT_EQ(by_step[step].count(tag), 1u) << tag << " at step " << step;
  }
  for (int64_t step : {2, 4}) {
    EXPECT_EQ(by_step[step].count("eval_loss"), 1u) << step;
    EXPECT_EQ(by_step[step].count("eval_accuracy"), 1u) << step;
  }
  EXPECT_EQ(by_step[3].count("eval_loss"), 0u);
  std::istringstream jsonl(testing::read_bytes((fs::path(dir) / "metrics.jsonl").string()));
  std::string first;
  std::getline(jsonl, first);
  const size_t at = first.find("\"loss\": ");
  ASSERT_NE(at, std::string::npos) << first;
  EXPECT_FLOAT_EQ(by_step[1]["loss"], static_cast<float>(std::stod(first.substr(at + 8))));
}

TEST(TensorBoard, UnwritableDirectoryIsAClearError) {
  auto w = TensorBoardWriter::open("/nonexistent/dir");
  ASSERT_FALSE(w.ok());
  EXPECT_NE(w.status().message().find("logging.tensorboard: cannot create"), std::string::npos)
      << w.status();
}

}  // namespace
}  // namespace sy
