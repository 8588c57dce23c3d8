#include "trainer/tokenizer.h"

#include <string>

#include "gtest/gtest.h"

namespace sy {
namespace {

TEST(TokenizerTest, EveryByteRoundTrips) {
  std::string text;
  for (int b = 0; b < 256; ++b) text += static_cast<char>(b);
  text += "37+485=522\n\xc3\xa9";
  std::vector<int32_t> ids = ByteTokenizer::encode(text);
  ASSERT_EQ(ids.size(), text.size());
  for (int b = 0; b < 256; ++b) EXPECT_EQ(ids[b], b);
  absl::StatusOr<std::string> back = ByteTokenizer::decode(ids);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, text);
}

TEST(TokenizerTest, SpecialIdsAreTheAgreedBytes) {
  EXPECT_EQ(ByteTokenizer::encode("\n"), std::vector<int32_t>{kEndOfAnswerId});
  EXPECT_EQ(kEndOfAnswerId, static_cast<int32_t>(kEndOfAnswer));
  EXPECT_EQ(kPadId, 0);
  EXPECT_TRUE(ByteTokenizer::encode("").empty());
}

TEST(TokenizerTest, IdsOutsideTheByteRangeAreAnErrorNamingThem) {
  std::vector<int32_t> ids = {104, 105, 300};
  absl::StatusOr<std::string> text = ByteTokenizer::decode(ids);
  ASSERT_FALSE(text.ok());
  EXPECT_NE(text.status().message().find("token 300 at position 2"), std::string::npos)
      << text.status();
  std::vector<int32_t> negative = {-1};
  EXPECT_FALSE(ByteTokenizer::decode(negative).ok());
}

}  // namespace
}  // namespace sy
