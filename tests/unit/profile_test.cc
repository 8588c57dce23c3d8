// kernels/profile: regions and host counters of one profiled step, on the CPU.
#include "kernels/profile.h"

#include <string>
#include <thread>

#include "gtest/gtest.h"

namespace sy {
namespace {

TEST(Profile, CountersAddUpWhileOpenAndAreIgnoredOtherwise) {
  profile::count("ignored", 5.0);  // no profile open: nothing recorded
  profile::open(Device::cpu());
  profile::count("queries", 1.5);
  profile::count("waits", 0.25);
  profile::count("queries", 0.5);
  const std::vector<profile::Region> regions = profile::close();
  EXPECT_TRUE(regions.empty());
  const std::vector<profile::Counter> counters = profile::counters();
  ASSERT_EQ(counters.size(), 2u);
  EXPECT_EQ(counters[0].name, "queries");
  EXPECT_EQ(counters[0].times, 2);
  EXPECT_DOUBLE_EQ(counters[0].host_ms, 2.0);
  EXPECT_EQ(counters[1].name, "waits");
  EXPECT_EQ(counters[1].times, 1);
  const std::string table = profile::format_table(regions, 10.0);
  EXPECT_NE(table.find("host: queries 2 times, 2.000 ms"), std::string::npos) << table;
  profile::count("after close", 1.0);
  EXPECT_EQ(profile::counters().size(), 2u) << "a closed profile takes no counts";
  profile::open(Device::cpu());
  EXPECT_TRUE(profile::close().empty());
  EXPECT_TRUE(profile::counters().empty()) << "a new profile starts with no counters";
}

TEST(Profile, HostTimerCountsItsScopeOnlyWhileAProfileIsOpen) {
  { profile::HostTimer t("closed"); }
  profile::open(Device::cpu());
  for (int i = 0; i < 2; ++i) {
    profile::HostTimer t("sleep");
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  profile::close();
  const std::vector<profile::Counter> counters = profile::counters();
  ASSERT_EQ(counters.size(), 1u) << "a timer made with no profile open counts nothing";
  EXPECT_EQ(counters[0].name, "sleep");
  EXPECT_EQ(counters[0].times, 2);
  EXPECT_GE(counters[0].host_ms, 4.0);
}

TEST(Profile, RegionsAccumulateByNameWithHostTime) {
  profile::open(Device::cpu());
  for (int i = 0; i < 2; ++i) {
    profile::Scope s("sleep");
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  { profile::Scope s("other"); }
  const std::vector<profile::Region> regions = profile::close();
  ASSERT_EQ(regions.size(), 2u);
  EXPECT_EQ(regions[0].name, "sleep");
  EXPECT_EQ(regions[0].calls, 2);
  EXPECT_GE(regions[0].ms, 4.0);
  EXPECT_DOUBLE_EQ(regions[0].ms, regions[0].host_ms) << "on the CPU the region time is the host's";
  EXPECT_EQ(regions[1].name, "other");
}

}  // namespace
}  // namespace sy
