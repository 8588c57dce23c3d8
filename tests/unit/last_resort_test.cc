// The binary's last catch: a real std::bad_alloc (a std::vector no host can hold), the tensor
// allocator's own out-of-memory error, and any other exception each end as one error line and
// exit status 1; a job's rank turns the same failure into a ResourceExhausted status that says
// what to lower, so the other ranks hear of it instead of hanging.
#include "trainer/cli/last_resort.h"

#include <algorithm>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "absl/strings/match.h"
#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"
#include "kernels/tensor.h"
#include "tests/testing/small_model.h"
#include "trainer/commands.h"

namespace sy {
namespace {

// 4 EiB: under std::vector<char>'s max_size, so it reaches operator new, which Linux refuses
// at once (no overcommit of more than the address space).
int allocate_too_much() {
  std::vector<char> v(size_t{1} << 62);
  volatile char* keep = v.data();  // the allocation is used: it cannot be elided
  return keep != nullptr;
}

TEST(LastResort, APlainBadAllocSaysOutOfHostMemoryAndWhatToLower) {
  std::ostringstream err;
  const int code = run_catching_exceptions("train", err, allocate_too_much);
  EXPECT_EQ(code, 1);
  EXPECT_EQ(err.str(),
            "switchyard: error: out of host memory while running 'switchyard train': an "
            "allocation failed (std::bad_alloc); lower train.micro_batch (generate and score: "
            "--batch_size) or the model's sizes (model.d_model, n_layers, vocab_size, "
            "moe.num_experts), or run on a machine with more memory\n");
}

TEST(LastResort, TheTensorAllocatorsOwnMessageIsKept) {
  std::ostringstream err;
  const int code = run_catching_exceptions("generate", err, [] {
    Tensor t = Tensor::empty({int64_t{1} << 40, 1024}, DType::kF32);  // 4 PiB
    return static_cast<int>(t.numel());
  });
  EXPECT_EQ(code, 1);
  EXPECT_TRUE(absl::StartsWith(err.str(),
                               "switchyard: error: out of host memory while running 'switchyard "
                               "generate': allocating 4194304.0 GiB for one tensor; lower "))
      << err.str();
  EXPECT_TRUE(absl::EndsWith(err.str(), ", or run on a machine with more memory\n")) << err.str();
  const std::string text = err.str();
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 1) << text;
}

TEST(LastResort, AGpuAllocationFailureIsNotCalledHostMemory) {
  const std::string m = out_of_memory_message(
      "rl",
      "cannot allocate 512 MiB on cuda:0 (70.1 GiB held by tensors): out of memory. Lower "
      "train.micro_batch or model.seq_len, or use more GPUs (parallel.expert_parallel_size).");
  EXPECT_TRUE(absl::StartsWith(m,
                               "out of GPU memory while running 'switchyard rl': cannot "
                               "allocate 512 MiB on cuda:0"))
      << m;
  EXPECT_FALSE(absl::StrContains(m, "host")) << m;
}

TEST(LastResort, OtherExceptionsGiveTheirMessageAndStatusOne) {
  std::ostringstream err;
  EXPECT_EQ(run_catching_exceptions("data", err,
                                    []() -> int { throw std::runtime_error("disk on fire"); }),
            1);
  EXPECT_EQ(err.str(), "switchyard: error: disk on fire\n");
}

TEST(LastResort, ANormalExitStatusPassesThroughSilently) {
  std::ostringstream err;
  EXPECT_EQ(run_catching_exceptions("train", err, [] { return 0; }), 0);
  EXPECT_EQ(run_catching_exceptions("train", err, [] { return 3; }), 3);
  EXPECT_EQ(err.str(), "");
}

TEST(LastResort, AJobTurnsABadAllocIntoAStatusThatSaysWhatToLower) {
  switchyard::Experiment config;
  ASSERT_TRUE(google::protobuf::TextFormat::ParseFromString(testing::kSmallModel, &config));
  std::ostringstream out;
  const absl::Status s = run_as_job(config, out, [](Communicator*) -> absl::Status {
    allocate_too_much();
    return absl::OkStatus();
  });
  EXPECT_TRUE(absl::IsResourceExhausted(s)) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "out of host memory while running switchyard: ")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "lower train.micro_batch")) << s;
}

}  // namespace
}  // namespace sy
