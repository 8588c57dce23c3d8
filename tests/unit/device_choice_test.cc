// The job-wide device decision (parallel/device_choice.h) from made-up reports of every rank:
// each rank's device, the same decision on every rank, and the errors a user gets when a
// GPU job cannot work (a rank without a GPU, two ranks on one GPU).
#include "parallel/device_choice.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "parallel/local_communicator.h"

namespace sy {
namespace {

// `ranks_per_host` ranks on each of `hosts` hosts, every rank seeing `gpus` GPUs, each rank
// reporting the bus id of GPU local_rank % gpus (as local_rank_gpus does).
std::vector<RankGpus> job(int hosts, int ranks_per_host, int gpus) {
  std::vector<RankGpus> ranks;
  for (int h = 0; h < hosts; ++h) {
    for (int l = 0; l < ranks_per_host; ++l) {
      RankGpus r{.host = "node" + std::to_string(h), .local_rank = l, .gpus = gpus};
      if (gpus > 0) r.gpu_id = "0000:" + std::to_string(10 + l % gpus) + ":00.0";
      ranks.push_back(r);
    }
  }
  return ranks;
}

// Every rank's decision; they must all succeed or all fail with the same message.
std::vector<absl::StatusOr<Device>> decide_all(DeviceWish wish, const std::vector<RankGpus>& ranks) {
  std::vector<absl::StatusOr<Device>> out;
  for (int r = 0; r < static_cast<int>(ranks.size()); ++r)
    out.push_back(decide_device(wish, ranks, r));
  for (const auto& d : out) {
    EXPECT_EQ(d.ok(), out[0].ok());
    if (!d.ok() && !out[0].ok()) EXPECT_EQ(d.status(), out[0].status()) << "ranks must agree";
  }
  return out;
}

void expect_error(const absl::StatusOr<Device>& d, const std::vector<std::string>& needles) {
  ASSERT_FALSE(d.ok()) << "decided " << d->str();
  const std::string message(d.status().message());
  for (const std::string& needle : needles)
    EXPECT_NE(message.find(needle), std::string::npos) << "'" << needle << "' not in: " << message;
}

TEST(DeviceChoiceTest, CpuWishIsTheCpuWhateverTheGpus) {
  for (const auto& d : decide_all(DeviceWish::kCpu, job(1, 2, 2))) EXPECT_EQ(*d, Device::cpu());
  for (const auto& d : decide_all(DeviceWish::kCpu, job(1, 4, 2))) EXPECT_EQ(*d, Device::cpu());
}

TEST(DeviceChoiceTest, OneProcess) {
  EXPECT_EQ(*decide_device(DeviceWish::kAuto, job(1, 1, 0), 0), Device::cpu());
  EXPECT_EQ(*decide_device(DeviceWish::kAuto, job(1, 1, 8), 0), Device::cuda(0));
  EXPECT_EQ(*decide_device(DeviceWish::kCuda, job(1, 1, 1), 0), Device::cuda(0));
  expect_error(decide_device(DeviceWish::kCuda, job(1, 1, 0), 0),
               {"DEVICE_CUDA", "no GPU is visible", "DEVICE_AUTO"});
}

TEST(DeviceChoiceTest, EachRankTakesTheGpuOfItsLocalRank) {
  for (DeviceWish wish : {DeviceWish::kAuto, DeviceWish::kCuda}) {
    // mpirun -np 4 on two 2-GPU nodes: local ranks 0, 1 on each.
    const auto d = decide_all(wish, job(2, 2, 2));
    ASSERT_TRUE(d[0].ok()) << d[0].status();
    EXPECT_EQ(*d[0], Device::cuda(0));
    EXPECT_EQ(*d[1], Device::cuda(1));
    EXPECT_EQ(*d[2], Device::cuda(0));
    EXPECT_EQ(*d[3], Device::cuda(1));
  }
  // Fewer ranks than GPUs: the first ones.
  const auto d = decide_all(DeviceWish::kAuto, job(1, 2, 8));
  EXPECT_EQ(*d[1], Device::cuda(1));
}

TEST(DeviceChoiceTest, SlurmGpuPerTaskEveryRankSeesOnlyItsOwnGpu) {
  // --gpus-per-task=1: every rank sees one GPU, as cuda:0, each a different one.
  std::vector<RankGpus> ranks = job(1, 4, 1);
  for (int r = 0; r < 4; ++r) ranks[r].gpu_id = "0000:" + std::to_string(20 + r) + ":00.0";
  for (const auto& d : decide_all(DeviceWish::kCuda, ranks)) EXPECT_EQ(*d, Device::cuda(0));
}

TEST(DeviceChoiceTest, AutoFallsBackToTheCpuOnEveryRankWhenOneHasNoGpu) {
  std::vector<RankGpus> ranks = job(2, 2, 2);
  ranks[3].gpus = 0;
  ranks[3].gpu_id.clear();
  for (const auto& d : decide_all(DeviceWish::kAuto, ranks)) EXPECT_EQ(*d, Device::cpu());
}

TEST(DeviceChoiceTest, CudaWishWithARankWithoutGpuNamesIt) {
  std::vector<RankGpus> ranks = job(2, 2, 2);
  ranks[3].gpus = 0;
  ranks[3].gpu_id.clear();
  expect_error(decide_all(DeviceWish::kCuda, ranks)[0],
               {"DEVICE_CUDA", "rank 3 (host node1) sees no GPU", "among 4 ranks", "DEVICE_AUTO",
                "DEVICE_CPU"});
  ranks[1].gpus = 0;
  expect_error(decide_all(DeviceWish::kCuda, ranks)[2],
               {"ranks 1 (host node0), 3 (host node1) see no GPU"});
  // Nobody has one (a CPU cluster, or a build without CUDA).
  expect_error(decide_all(DeviceWish::kCuda, job(1, 2, 0))[1],
               {"ranks 0 (host node0), 1 (host node0) see no GPU"});
}

TEST(DeviceChoiceTest, MoreRanksThanGpusOnAHostIsAnError) {
  for (DeviceWish wish : {DeviceWish::kAuto, DeviceWish::kCuda}) {
    // 4 ranks on a 2-GPU node: local ranks 0 and 2 would take GPU 0.
    expect_error(decide_all(wish, job(1, 4, 2))[3],
                 {"ranks 0, 2 on host node0 would share one GPU (0000:10:00.0)",
                  "4 ranks run there", "sees 2 GPUs", "one rank per GPU", "DEVICE_CPU"});
  }
  // The same on the second host only: its ranks are named by their world rank.
  std::vector<RankGpus> ranks = job(2, 2, 2);
  ranks.push_back(ranks[2]);
  ranks.back().local_rank = 2;  // a third rank on node1, on GPU 2 % 2 = 0
  expect_error(decide_all(DeviceWish::kCuda, ranks)[0],
               {"ranks 2, 4 on host node1 would share one GPU", "3 ranks run there"});
  // The same bus id on different hosts is different GPUs.
  for (const auto& d : decide_all(DeviceWish::kCuda, job(3, 1, 1))) EXPECT_TRUE(d.ok());
}

TEST(DeviceChoiceTest, ReportsTravelAsText) {
  const RankGpus r{.host = "node07", .local_rank = 3, .gpus = 8, .gpu_id = "00000000:1B:00.0"};
  absl::StatusOr<RankGpus> back = RankGpus::decode(r.encode());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->host, r.host);
  EXPECT_EQ(back->local_rank, 3);
  EXPECT_EQ(back->gpus, 8);
  EXPECT_EQ(back->gpu_id, r.gpu_id);
  const RankGpus none{.host = "cpu-node"};
  EXPECT_EQ(RankGpus::decode(none.encode())->gpu_id, "");
  EXPECT_FALSE(RankGpus::decode("node07\t3").ok());
  EXPECT_FALSE(RankGpus::decode("node07\tx\t8\tid").ok());
}

TEST(DeviceChoiceTest, AGroupOfOneCarriesEveryDevice) {
  LocalCommunicator alone;
  EXPECT_TRUE(carries(alone, Device::cpu()));
  EXPECT_TRUE(carries(alone, Device::cuda(1)));
  EXPECT_EQ(make_world_for(Device::cuda(0), alone), nullptr);
  // Alone, the choice needs no other rank: this machine's GPUs decide.
  absl::StatusOr<Device> d = choose_job_device(DeviceWish::kCpu, alone);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(*d, Device::cpu());
}

}  // namespace
}  // namespace sy
