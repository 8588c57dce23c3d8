// The subcommand flag parser: both value forms, repeated flags, and every mistake a user can
// make coming back as a Status that lists the known flags.
#include "trainer/flags.h"

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace sy {
namespace {

// The flags of a made-up subcommand, one of each kind.
struct Fixture {
  std::string config = "default.textproto";
  std::vector<std::string> sets;
  int64_t steps = 7;
  bool verbose = false;
  FlagSet flags{"switchyard demo", "--config FILE [--set TEXT]...", "A subcommand for tests."};

  Fixture() {
    flags.add_string("config", "FILE", &config, "experiment config");
    flags.add_strings("set", "TEXT", &sets, "override");
    flags.add_int("steps", "N", &steps, "optimizer steps");
    flags.add_bool("verbose", &verbose, "say more");
  }
};

void expect_error(const absl::Status& status, const std::string& what) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(status.message(), what)) << status;
  // Every mistake lists what would have been accepted.
  EXPECT_TRUE(absl::StrContains(status.message(),
                                "known flags: --config FILE, --set TEXT (repeatable), --steps N, "
                                "--verbose, --help"))
      << status;
}

TEST(FlagsTest, SpaceAndEqualsFormsBothWork) {
  Fixture f;
  ASSERT_TRUE(f.flags.parse({"--config", "a.textproto", "--steps=12", "--verbose"}).ok());
  EXPECT_EQ(f.config, "a.textproto");
  EXPECT_EQ(f.steps, 12);
  EXPECT_TRUE(f.verbose);
  EXPECT_TRUE(f.flags.was_given("config"));
  EXPECT_FALSE(f.flags.was_given("set"));

  Fixture g;
  ASSERT_TRUE(g.flags.parse({"--config=b.textproto", "--steps", "-3", "--verbose=false"}).ok());
  EXPECT_EQ(g.config, "b.textproto");
  EXPECT_EQ(g.steps, -3);
  EXPECT_FALSE(g.verbose);
}

TEST(FlagsTest, EqualsFormKeepsEverythingAfterTheFirstEquals) {
  Fixture f;
  ASSERT_TRUE(f.flags.parse({"--set=a: \"x=y\"", "--set=--not-a-flag"}).ok());
  EXPECT_EQ(f.sets, (std::vector<std::string>{"a: \"x=y\"", "--not-a-flag"}));
}

TEST(FlagsTest, UnsetFlagsKeepTheirDefaults) {
  Fixture f;
  ASSERT_TRUE(f.flags.parse({}).ok());
  EXPECT_EQ(f.config, "default.textproto");
  EXPECT_EQ(f.steps, 7);
  EXPECT_FALSE(f.verbose);
}

TEST(FlagsTest, RepeatedFlagCollectsValuesInOrder) {
  Fixture f;
  ASSERT_TRUE(
      f.flags.parse({"--set", "model { d_model: 8 }", "--set=train { steps: 1 }", "--set", "x"})
          .ok());
  EXPECT_EQ(f.sets, (std::vector<std::string>{"model { d_model: 8 }", "train { steps: 1 }", "x"}));
}

TEST(FlagsTest, UnknownFlagListsTheKnownOnes) {
  Fixture f;
  expect_error(f.flags.parse({"--confg", "x"}), "switchyard demo: unknown flag --confg");
  Fixture g;
  expect_error(g.flags.parse({"--confg=x"}), "unknown flag --confg");
}

TEST(FlagsTest, MissingValueIsAnError) {
  Fixture f;
  expect_error(f.flags.parse({"--config"}), "flag --config needs a value");
  // A flag where the value should be is a forgotten value, not a value.
  Fixture g;
  expect_error(g.flags.parse({"--config", "--set", "x"}), "flag --config needs a value");
}

TEST(FlagsTest, MalformedValuesAreErrors) {
  Fixture f;
  expect_error(f.flags.parse({"--steps", "ten"}), "flag --steps expects an integer, got 'ten'");
  Fixture g;
  expect_error(g.flags.parse({"--verbose=maybe"}), "flag --verbose expects true or false");
}

TEST(FlagsTest, SingularFlagGivenTwiceIsAnError) {
  Fixture f;
  expect_error(f.flags.parse({"--config", "a", "--config=b"}),
               "flag --config given more than once");
}

TEST(FlagsTest, StrayArgumentIsAnError) {
  Fixture f;
  expect_error(f.flags.parse({"configs/tiny.textproto"}),
               "unexpected argument 'configs/tiny.textproto'");
  Fixture g;
  expect_error(g.flags.parse({"-c", "x"}), "unexpected argument '-c'");
}

TEST(FlagsTest, HelpStopsParsingAndDescribesEveryFlag) {
  Fixture f;
  ASSERT_TRUE(f.flags.parse({"--steps", "3", "--help", "--bogus"}).ok());
  EXPECT_TRUE(f.flags.help_requested());
  std::string help = f.flags.help();
  EXPECT_TRUE(absl::StartsWith(help, "usage: switchyard demo --config FILE [--set TEXT]...\n"))
      << help;
  for (const char* line : {"--config FILE", "--set TEXT", "override (repeatable)", "--steps N",
                           "--verbose", "--help"}) {
    EXPECT_TRUE(absl::StrContains(help, line)) << line << " missing from\n" << help;
  }
  Fixture g;
  ASSERT_TRUE(g.flags.parse({"-h"}).ok());
  EXPECT_TRUE(g.flags.help_requested());
}

TEST(FlagsTest, RequireNamesTheMissingFlag) {
  Fixture f;
  ASSERT_TRUE(f.flags.parse({"--steps=1"}).ok());
  expect_error(f.flags.require("config"), "--config FILE is required");
  EXPECT_TRUE(f.flags.require("steps").ok());
}

}  // namespace
}  // namespace sy
