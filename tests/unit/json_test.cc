#include "trainer/json.h"

#include <cmath>
#include <limits>
#include <string>

#include "gtest/gtest.h"

namespace sy {
namespace {

TEST(JsonTest, RoundTripsEveryKindOfValueCompactly) {
  const std::string text =
      R"({"null":null,"t":true,"f":false,"int":-42,"big":9007199254740993,"pi":3.25,)"
      R"("exp":1e-07,"s":"a\"b\\c\nd","arr":[1,[2,{}],[]],"obj":{"z":1,"a":2}})";
  absl::StatusOr<Json> parsed = parse_json(text);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(to_json(*parsed), text);
  absl::StatusOr<Json> again = parse_json(to_json(*parsed));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *parsed);

  // Integers stay exact int64 even past 2^53, where a double would round.
  EXPECT_TRUE(parsed->find("big")->is_int());
  EXPECT_EQ(parsed->find("big")->as_int(), 9007199254740993);
  EXPECT_FALSE(parsed->find("pi")->is_int());
  EXPECT_DOUBLE_EQ(parsed->find("pi")->as_double(), 3.25);
  EXPECT_EQ(parsed->find("missing"), nullptr);
  // Key order is the file's, not sorted.
  EXPECT_EQ(parsed->find("obj")->as_object()[0].first, "z");
}

TEST(JsonTest, WhitespaceIsAllowedAroundTokens) {
  absl::StatusOr<Json> parsed = parse_json(" \n{ \"a\" : [ 1 , 2 ] ,\t\"b\" : { } }\r\n");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(to_json(*parsed), R"({"a":[1,2],"b":{}})");
}

TEST(JsonTest, StringEscapesDecodeToUtf8AndControlCharactersAreEscapedOnOutput) {
  absl::StatusOr<Json> parsed = parse_json(R"("\"\\\/\b\f\n\r\t\u0041\u00e9\u20ac\ud83d\ude00")");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->as_string(), "\"\\/\b\f\n\r\tA\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
  EXPECT_EQ(to_json(Json(std::string("x\x01y\n"))), R"("x\u0001y\n")");
  // Non-ASCII bytes pass through unescaped.
  EXPECT_EQ(to_json(Json("\xc3\xa9")), "\"\xc3\xa9\"");
}

TEST(JsonTest, NumbersKeepTheirKind) {
  EXPECT_EQ(to_json(Json(2.0)), "2.0");  // stays a double when read back
  EXPECT_EQ(to_json(Json(0.1)), "0.1");  // shortest round-trip form
  EXPECT_EQ(to_json(Json(int64_t{-7})), "-7");
  EXPECT_EQ(to_json(Json(uint64_t{123})), "123");
  EXPECT_EQ(to_json(Json(std::nan(""))), "null");
  EXPECT_EQ(to_json(Json(std::numeric_limits<double>::infinity())), "null");
  absl::StatusOr<Json> huge = parse_json("123456789012345678901234567890");
  ASSERT_TRUE(huge.ok());
  EXPECT_FALSE(huge->is_int());  // beyond int64: a double, as other parsers do
  EXPECT_DOUBLE_EQ(huge->as_double(), 1.2345678901234568e29);
  absl::StatusOr<Json> exp = parse_json("-1.5E+3");
  ASSERT_TRUE(exp.ok());
  EXPECT_DOUBLE_EQ(exp->as_double(), -1500.0);
}

TEST(JsonTest, BuildsObjectsInInsertionOrder) {
  Json obj = Json::Object();
  obj.set("step", 10);
  obj.set("loss", 2.5);
  obj.set("tags", Json::Array{Json("a"), Json(true), Json()});
  obj.set("step", 11);  // replaces in place
  EXPECT_EQ(to_json(obj), R"({"step":11,"loss":2.5,"tags":["a",true,null]})");
}

struct Malformed {
  std::string text;
  size_t offset;
  std::string what;
};

class JsonMalformedTest : public ::testing::TestWithParam<Malformed> {};

TEST_P(JsonMalformedTest, ErrorGivesByteOffsetAndReason) {
  const Malformed& m = GetParam();
  absl::StatusOr<Json> parsed = parse_json(m.text);
  ASSERT_FALSE(parsed.ok()) << "accepted: " << m.text;
  std::string message(parsed.status().message());
  EXPECT_NE(message.find("JSON error at byte " + std::to_string(m.offset) + ":"), std::string::npos)
      << message;
  EXPECT_NE(message.find(m.what), std::string::npos) << message;
}

INSTANTIATE_TEST_SUITE_P(
    Inputs, JsonMalformedTest,
    ::testing::Values(
        Malformed{"", 0, "expected a value, found end of input"},
        Malformed{R"({"a": "abc)", 6, "unterminated string"},
        Malformed{"[1,2,]", 5, "trailing comma"}, Malformed{R"({"a":1,})", 7, "trailing comma"},
        Malformed{R"(["a\qb"])", 3, "bad escape: backslash followed by 'q'"},
        Malformed{R"("\u12G4")", 5, "expected a hex digit, found 'G'"},
        Malformed{R"("\ud83d")", 1, "high surrogate without a low surrogate"},
        Malformed{R"("\ude00")", 1, "low surrogate without a high surrogate"},
        Malformed{std::string("\"a\x01\""), 2, "control character 0x01"},
        Malformed{std::string(300, '['), 256, "nesting deeper than 256"},
        Malformed{"[1 2]", 3, "expected ',' or ']', found '2'"},
        Malformed{R"({"a" 1})", 5, "expected ':', found '1'"},
        Malformed{R"({1:2})", 1, "expected a string key"},
        Malformed{R"({"k":1,"k":2})", 7, "duplicate key \"k\""},
        Malformed{"[1", 2, "unterminated array"}, Malformed{"012", 1, "leading zeros"},
        Malformed{"1.", 2, "expected a digit after '.'"}, Malformed{"-", 1, "expected a digit"},
        Malformed{"1e", 2, "expected an exponent digit"}, Malformed{"1e999", 0, "out of the range"},
        Malformed{"tru", 0, "expected a value"}, Malformed{"NaN", 0, "expected a value, found 'N'"},
        Malformed{"{} x", 3, "unexpected characters after the JSON value"}));

TEST(JsonTest, NestingUpToTheLimitIsAccepted) {
  std::string text = std::string(kMaxJsonDepth, '[') + std::string(kMaxJsonDepth, ']');
  EXPECT_TRUE(parse_json(text).ok());
}

}  // namespace
}  // namespace sy
