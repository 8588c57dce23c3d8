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

// {"k0":0,...,"k39":0,"k7":1}: the duplicate comes past the linear scan of small objects.
std::string forty_keys_then_k7_again() {
  std::string text = "{";
  for (int i = 0; i < 40; ++i) text += "\"k" + std::to_string(i) + "\":0,";
  return text + R"("k7":1})";
}

// {"a":{"a":... opened `depth` times, never closed: each level is 5 bytes.
std::string nested_objects(int depth) {
  std::string text;
  for (int i = 0; i < depth; ++i) text += "{\"a\":";
  return text;
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
        Malformed{"{} x", 3, "unexpected characters after the JSON value"},
        // Duplicates deep inside, in a large object (the hash set), with escapes in the key.
        Malformed{R"({"a":[{"x":1,"y":{"k":1,"k":2}}]})", 24, "duplicate key \"k\""},
        Malformed{forty_keys_then_k7_again(), 311, "duplicate key \"k7\""},
        Malformed{R"({"a\"b":1,"a\"b":2})", 10, "duplicate key \"a\"b\""},
        Malformed{nested_objects(300), 5 * 256, "nesting deeper than 256"},
        Malformed{"-012", 2, "leading zeros"}, Malformed{"[00]", 2, "leading zeros"},
        Malformed{"1e-", 3, "expected an exponent digit"},
        Malformed{"1e9999999999999999999999", 0, "out of the range"},
        Malformed{"[1,2x]", 4, "expected ',' or ']', found 'x'"},
        Malformed{"[true false]", 6, "expected ',' or ']', found 'f'"},
        Malformed{R"({"a":1 "b":2})", 7, "expected ',' or '}', found '\"'"},
        Malformed{R"({"a":1)", 6, "unterminated object"},
        Malformed{R"({"a")", 4, "expected ':', found end of input"},
        Malformed{R"({"a":})", 5, "expected a value, found '}'"},
        Malformed{R"(["\u12"])", 6, "expected a hex digit, found '\"'"},
        Malformed{R"("\ud83d\u0041")", 1, "high surrogate without a low surrogate"},
        Malformed{R"("\ud83d\x")", 1, "high surrogate without a low surrogate"},
        Malformed{R"("ab\)", 0, "unterminated string"},
        // The input quoted in nlohmann's message does not confuse the reason.
        Malformed{R"("forbidden character after backslash\uZZ")", 38, "expected a hex digit"},
        // JSON text is UTF-8 (RFC 8259): a stray byte, a bad continuation, a cut sequence.
        Malformed{std::string("[\"a\xff\"]"), 3, "not valid UTF-8 at byte 0xff"},
        Malformed{std::string("\"\xc3\x28\""), 2, "not valid UTF-8 at '('"},
        Malformed{std::string("\"\xe2\x82"), 0, "unterminated string"},
        // nlohmann reads a NUL as the end of the input; here it is a byte like any other.
        Malformed{std::string("1\0 2", 4), 1, "unexpected characters after the JSON value"},
        Malformed{std::string("[\0]", 3), 1, "expected a value, found byte 0x00"},
        Malformed{std::string("\"a\0\"", 4), 2, "control character 0x00"}));

TEST(JsonTest, IntegersPastInt64BecomeDoubles) {
  absl::StatusOr<Json> parsed = parse_json(
      "[9223372036854775807,-9223372036854775808,"
      "9223372036854775808,18446744073709551615,"
      "18446744073709551616,-9223372036854775809,-0]");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  const Json::Array& n = parsed->as_array();
  EXPECT_EQ(n[0].as_int(), std::numeric_limits<int64_t>::max());
  EXPECT_EQ(n[1].as_int(), std::numeric_limits<int64_t>::min());
  for (size_t i = 2; i < 6; ++i) EXPECT_FALSE(n[i].is_int()) << i;
  EXPECT_EQ(n[2].as_double(), 9223372036854775808.0);
  EXPECT_EQ(n[3].as_double(), 18446744073709551616.0);
  EXPECT_EQ(n[4].as_double(), 18446744073709551616.0);
  EXPECT_EQ(n[5].as_double(), -9223372036854775808.0);
  EXPECT_TRUE(n[6].is_int());
  EXPECT_EQ(n[6].as_int(), 0);
  // Below the smallest double a number is 0, as strtod and other parsers make it.
  absl::StatusOr<Json> tiny = parse_json("[1e-400,5e-324]");
  ASSERT_TRUE(tiny.ok()) << tiny.status();
  EXPECT_EQ(tiny->as_array()[0].as_double(), 0.0);
  EXPECT_EQ(tiny->as_array()[1].as_double(), std::numeric_limits<double>::denorm_min());
  EXPECT_EQ(to_json(*tiny), "[0.0,5e-324]");
}

TEST(JsonTest, StringsCarryNulAndTheWriterKeepsItsOutputValidUtf8) {
  absl::StatusOr<Json> parsed = parse_json(R"({"a\u0000b":"\u0000"})");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->as_object()[0].first, std::string("a\0b", 3));
  EXPECT_EQ(to_json(*parsed), R"({"a\u0000b":"\u0000"})");
  // A built string that is not UTF-8 (a completion cut inside a character) is written with
  // U+FFFD in place of the bad bytes, so the line still reads back.
  const std::string written = to_json(Json(std::string("ok\xe2\x82 \xff\xc3\xa9")));
  EXPECT_EQ(written, "\"ok\xef\xbf\xbd \xef\xbf\xbd\xc3\xa9\"");
  EXPECT_TRUE(parse_json(written).ok());
  // DEL and '/' need no escape.
  EXPECT_EQ(to_json(Json("\x7f/")), "\"\x7f/\"");
}

TEST(JsonTest, ALeadingByteOrderMarkIsSkippedAndOffsetsStillCountIt) {
  absl::StatusOr<Json> parsed = parse_json("\xef\xbb\xbf[1]");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(to_json(*parsed), "[1]");
  absl::StatusOr<Json> bad = parse_json("\xef\xbb\xbf[1,]");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("JSON error at byte 6: trailing comma"), std::string::npos)
      << bad.status();
}

TEST(JsonTest, ShortestDoublesEvenWhereGrisuIsLonger) {
  EXPECT_EQ(to_json(Json(-16.301342)), "-16.301342");
  EXPECT_EQ(to_json(Json(-9.56350517)), "-9.56350517");
  EXPECT_EQ(to_json(Json(1e15)), "1e+15");
}

TEST(JsonTest, ALargeObjectKeepsItsKeysInOrder) {
  std::string text = "{";
  for (int i = 0; i < 1000; ++i)
    text += (i ? ",\"" : "\"") + std::to_string(999 - i) + "\":" + std::to_string(i);
  text += "}";
  absl::StatusOr<Json> parsed = parse_json(text);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ASSERT_EQ(parsed->as_object().size(), 1000u);
  EXPECT_EQ(parsed->as_object()[0].first, "999");
  EXPECT_EQ(parsed->find("0")->as_int(), 999);
  EXPECT_EQ(to_json(*parsed), text);
}

TEST(JsonTest, NestingUpToTheLimitIsAccepted) {
  std::string text = std::string(kMaxJsonDepth, '[') + std::string(kMaxJsonDepth, ']');
  EXPECT_TRUE(parse_json(text).ok());
  std::string objects;
  for (int i = 0; i < kMaxJsonDepth; ++i) objects += "{\"a\":";
  objects += "1" + std::string(kMaxJsonDepth, '}');
  absl::StatusOr<Json> parsed = parse_json(objects);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(to_json(*parsed), objects);
}

}  // namespace
}  // namespace sy
