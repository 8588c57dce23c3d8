#pragma once
// TensorBoard event files: `logging { tensorboard: true }` writes the run's metrics where
// `tensorboard --logdir RUN_DIR` finds them. The format is the one TensorBoard reads:
// TFRecord framing (u64 length, masked CRC-32C of the length, the record, masked CRC-32C of
// the record, all little-endian) around serialized tensorflow.Event messages. The few fields
// used are written directly on the protobuf wire format, which needs no schema files:
//   Event:   wall_time = 1 (double), step = 2 (int64), file_version = 3 (string),
//            summary = 5 (Summary)
//   Summary: value = 1 (repeated Value);  Value: tag = 1 (string), simple_value = 2 (float)
#include <cstdint>
#include <fstream>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace sy {

class TensorBoardWriter {
 public:
  // Creates DIR/events.out.tfevents.<seconds>.<host> and writes the file-version record.
  static absl::StatusOr<std::unique_ptr<TensorBoardWriter>> open(const std::string& dir);

  void scalar(const std::string& tag, int64_t step, double value);
  // Every number in a metrics JSON object (one line of metrics.jsonl) except "step", as a
  // scalar at that "step"; a line without a step is skipped.
  void metrics_line(const std::string& json);
  const std::string& path() const { return path_; }

 private:
  TensorBoardWriter(std::string path, std::ofstream out)
      : path_(std::move(path)), out_(std::move(out)) {}
  void record(const std::string& event);

  std::string path_;
  std::ofstream out_;
};

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), and TFRecord's masking of it.
uint32_t crc32c(const void* data, size_t size);
uint32_t masked_crc32c(const void* data, size_t size);

}  // namespace sy
