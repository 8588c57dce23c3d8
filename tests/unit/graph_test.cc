// CapturedGraph off the GPU: the CPU cannot capture (supported() is false) and capture()
// refuses with a message naming the device; an uncaptured graph reports nothing recorded and
// refuses to replay.
#include "gtest/gtest.h"
#include "kernels/graph.h"

namespace sy {
namespace {

TEST(CapturedGraph, TheCpuCannotCapture) {
  EXPECT_FALSE(CapturedGraph::supported(Device::cpu()));
  CapturedGraph graph;
  EXPECT_FALSE(graph.captured());
  EXPECT_EQ(graph.nodes(), 0);
  EXPECT_EQ(graph.memory_bytes(), 0);
}

TEST(CapturedGraphDeathTest, CaptureOnTheCpuAndReplayBeforeCaptureAreRefused) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        CapturedGraph graph;
        graph.capture(Device::cpu(), [] {});
      },
      "cpu cannot capture a graph");
  EXPECT_DEATH(
      {
        CapturedGraph graph;
        graph.replay();
      },
      "replay before capture");
}

}  // namespace
}  // namespace sy
