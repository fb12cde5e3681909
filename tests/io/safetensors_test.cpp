// SPDX-License-Identifier: Apache-2.0
// Tests of the safetensors reader and writer: conversions, round trips, hostile and corrupt files.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include <vera/io/safetensors.hpp>

#include "io_support.hpp"

using Catch::Matchers::Contains;
using vera::format_error;
using vera::io::dtype;
using vera::io::safetensors_view;
using vera::io::safetensors_writer;
using vera_test::message_contains;

namespace {

float from_bits(std::uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

const dtype all_dtypes[] = {dtype::boolean, dtype::u8,      dtype::i8,          dtype::f8_e5m2,
                            dtype::f8_e4m3, dtype::f8_e8m0, dtype::f8_e4m3fnuz, dtype::f8_e5m2fnuz,
                            dtype::i16,     dtype::u16,     dtype::f16,         dtype::bf16,
                            dtype::i32,     dtype::u32,     dtype::f32,         dtype::i64,
                            dtype::u64,     dtype::f64,     dtype::c64};

// Parses a raw image and returns the format_error message ("" when it parsed).
std::string parse_error(const std::vector<unsigned char>& image) {
  try {
    safetensors_view view(image.data(), image.size(), "test.safetensors");
    return "";
  } catch (const format_error& e) {
    return e.what();
  }
}

std::string tensor_json(const std::string& name, const std::string& type, const std::string& shape,
                        const std::string& offsets) {
  return "\"" + name + "\": {\"dtype\": \"" + type + "\", \"shape\": " + shape +
         ", \"data_offsets\": " + offsets + "}";
}

}  // namespace

TEST_CASE("dtype names parse back and sub-byte types are refused", "[io][safetensors]") {
  for (const dtype type : all_dtypes) {
    const auto parsed = vera::io::parse_dtype(vera::io::dtype_name(type));
    REQUIRE(parsed.has_value());
    CHECK(*parsed == type);
  }
  CHECK_FALSE(vera::io::parse_dtype("F4").has_value());
  CHECK_FALSE(vera::io::parse_dtype("f32").has_value());  // names are case-sensitive
  CHECK(vera::io::detail::dtype_size(dtype::bf16) == 2);
  CHECK(vera::io::detail::dtype_size(dtype::c64) == 8);
}

TEST_CASE("float16 conversion is exact one way and rounds to nearest even the other",
          "[io][safetensors]") {
  using vera::io::detail::float_to_half;
  using vera::io::detail::half_to_float;
  CHECK(float_to_half(1.0f) == 0x3C00);
  CHECK(float_to_half(-2.0f) == 0xC000);
  CHECK(float_to_half(-0.0f) == 0x8000);
  CHECK(float_to_half(65504.0f) == 0x7BFF);
  CHECK(float_to_half(65519.99f) == 0x7BFF);
  CHECK(float_to_half(65520.0f) == 0x7C00);  // the tie above the largest half goes to infinity
  CHECK(float_to_half(std::ldexp(1.0f, -14)) == 0x0400);
  CHECK(float_to_half(std::ldexp(1.0f, -24)) == 0x0001);
  CHECK(float_to_half(std::ldexp(1.0f, -25)) == 0x0000);  // tie to even (zero)
  CHECK(float_to_half(std::ldexp(3.0f, -25)) == 0x0002);  // 1.5 units: tie to even (2)
  CHECK(float_to_half(std::ldexp(3.0f, -26)) == 0x0001);  // 0.75 units
  CHECK(float_to_half(std::ldexp(1.0f, -25) * 1.0001f) == 0x0001);
  CHECK(std::isnan(half_to_float(float_to_half(std::numeric_limits<float>::quiet_NaN()))));
  CHECK(std::isinf(half_to_float(0x7C00)));

  // Every half survives a round trip; every midpoint between neighbours rounds to the even one.
  for (std::uint32_t bits = 0; bits < 0x10000; ++bits) {
    const auto half = static_cast<std::uint16_t>(bits);
    const float value = half_to_float(half);
    if (std::isnan(value)) {
      CHECK(std::isnan(half_to_float(float_to_half(value))));
      continue;
    }
    REQUIRE(float_to_half(value) == half);
    if ((bits & 0x7FFF) < 0x7BFF) {
      const float next = half_to_float(static_cast<std::uint16_t>(bits + 1));
      const float midpoint = (value + next) / 2;  // exact: halves have 11 significant bits
      const auto even = (bits & 1u) == 0 ? half : static_cast<std::uint16_t>(bits + 1);
      REQUIRE(float_to_half(midpoint) == even);
    }
  }
}

TEST_CASE("bfloat16 conversion is exact one way and rounds to nearest even the other",
          "[io][safetensors]") {
  using vera::io::detail::bfloat16_to_float;
  using vera::io::detail::float_to_bfloat16;
  CHECK(float_to_bfloat16(1.0f) == 0x3F80);
  CHECK(float_to_bfloat16(0.1f) == 0x3DCD);
  CHECK(bfloat16_to_float(0x3DCD) == 0.10009765625f);  // PEFT's effective d_initial in bf16
  CHECK(float_to_bfloat16(std::numeric_limits<float>::max()) == 0x7F80);
  CHECK(std::isnan(bfloat16_to_float(float_to_bfloat16(std::numeric_limits<float>::quiet_NaN()))));
  for (std::uint32_t bits = 0; bits < 0x10000; ++bits) {
    const auto value = bfloat16_to_float(static_cast<std::uint16_t>(bits));
    if (std::isnan(value)) continue;
    REQUIRE(float_to_bfloat16(value) == bits);
    if ((bits & 0x7FFF) < 0x7F7F) {
      const float midpoint = from_bits((bits << 16) | 0x8000u);
      const auto even = (bits & 1u) == 0 ? bits : bits + 1;
      REQUIRE(float_to_bfloat16(midpoint) == even);
    }
  }
}

TEST_CASE("double to float16/bfloat16 rounds once", "[io][safetensors]") {
  // Rounding these to float first lands exactly on a tie, which would then round down.
  CHECK(vera::io::detail::double_to_half(1.0 + std::ldexp(1.0, -11) + std::ldexp(1.0, -40)) == 0x3C01);
  CHECK(vera::io::detail::double_to_bfloat16(1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -40)) == 0x3F81);
  CHECK(vera::io::detail::double_to_half(1.0 + std::ldexp(1.0, -11)) == 0x3C00);  // a true tie stays even
  CHECK(vera::io::detail::double_to_half(1e300) == 0x7C00);
  CHECK(vera::io::detail::double_to_bfloat16(-1e300) == 0xFF80);
}

TEMPLATE_TEST_CASE("every float dtype round-trips through the writer and the reader",
                   "[io][safetensors]", float, double) {
  // Values exact in every format (small integers, halves, quarters).
  const std::vector<TestType> values{0, 1, -2, 0.5, -0.25, 3, 1024, -7.5, 0.125, 96, -0.0, 12};
  for (const dtype stored : {dtype::f16, dtype::bf16, dtype::f32, dtype::f64}) {
    safetensors_writer writer;
    writer.set_metadata("format", "pt");
    writer.set_metadata("note", "unicode \xc3\xa9 survives");
    writer.add("matrix", stored, {3, 4}, values.data());
    writer.add("scalar", stored, {}, values.data() + 1);
    writer.add("empty", stored, {2, 0}, values.data());
    const auto image = writer.serialize();
    CHECK(vera::io::detail::load_le(image.data(), 8) % 8 == 0);  // header padded to 8 bytes

    const safetensors_view view(image.data(), image.size());
    REQUIRE(view.tensors().size() == 3);
    CHECK(view.metadata().at("note") == "unicode \xc3\xa9 survives");
    const auto& matrix = view.at("matrix");
    CHECK(matrix.type == stored);
    CHECK(matrix.shape == std::vector<std::uint64_t>{3, 4});
    CHECK(view.values<TestType>(matrix) == values);
    CHECK(view.values<double>("scalar") == std::vector<double>{1.0});
    CHECK(view.values<float>("empty").empty());
    CHECK(std::signbit(view.values<TestType>(matrix)[10]));  // -0 keeps its sign
  }
}

TEST_CASE("writer lays tensors out by element size, then name, and passes raw bytes through",
          "[io][safetensors]") {
  const std::vector<unsigned char> ids{1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0};
  const std::vector<float> small{1.0f, 2.0f, 3.0f};
  safetensors_writer writer;
  writer.add("b_f32", dtype::f32, {3}, small.data());
  writer.add_bytes("position_ids", dtype::i64, {2}, ids.data());
  writer.add("a_f16", dtype::f16, {3}, small.data());
  const auto image = writer.serialize();
  const safetensors_view view(image.data(), image.size());
  CHECK(view.at("position_ids").begin == 0);
  CHECK(view.at("b_f32").begin == 16);
  CHECK(view.at("a_f16").begin == 28);
  const auto& ids_info = view.at("position_ids");
  CHECK(std::vector<unsigned char>(view.bytes(ids_info),
                                   view.bytes(ids_info) + ids_info.byte_size()) == ids);
  CHECK_THROWS_MATCHES(view.values<float>("position_ids"), format_error,
                       message_contains("dtype I64"));
  CHECK_THROWS_MATCHES(view.at("missing"), format_error,
                       message_contains("no tensor named 'missing'"));
}

TEST_CASE("writer refuses duplicate names and unconvertible dtypes", "[io][safetensors]") {
  const float one = 1.0f;
  safetensors_writer writer;
  writer.add("x", dtype::f32, {1}, &one);
  CHECK_THROWS_AS(writer.add("x", dtype::f32, {1}, &one), vera::value_error);
  CHECK_THROWS_AS(writer.add("__metadata__", dtype::f32, {1}, &one), vera::value_error);
  CHECK_THROWS_AS(writer.add("y", dtype::i32, {1}, &one), vera::value_error);
  CHECK_THROWS_MATCHES(writer.add_bytes("n", dtype::u8, {4}, nullptr), vera::value_error,
                       message_contains("has 4 bytes but no data"));
  CHECK_THROWS_AS(writer.add_generated("g", dtype::f32, {1}, {}), vera::value_error);
  CHECK_NOTHROW(writer.add_bytes("empty", dtype::u8, {0}, nullptr));
  CHECK_THROWS_AS(writer.add_bytes("z", dtype::u8, {std::uint64_t{1} << 62, 16}, nullptr),
                  vera::value_error);
}

TEST_CASE("files are written atomically and read through a mapping", "[io][safetensors]") {
  vera_test::scratch_dir dir;
  const std::vector<double> values{1.5, -2.25, 3.0, 4.0};
  safetensors_writer writer;
  writer.add("w", dtype::f64, {2, 2}, values.data());
  writer.write(dir / "a.safetensors");
  CHECK(dir.entries() == std::vector<std::string>{"a.safetensors"});
  const vera::io::safetensors_file file(dir / "a.safetensors");
  CHECK(file.values<double>("w") == values);
  CHECK(file.path() == dir / "a.safetensors");

  // A generator that fails mid-write leaves the old file intact and no temporary behind.
  safetensors_writer failing;
  failing.add("first", dtype::f64, {2, 2}, values.data());
  failing.add_generated("second", dtype::f32, {4},
                        [](unsigned char*) { throw vera::value_error("boom"); });
  CHECK_THROWS_MATCHES(failing.write(dir / "a.safetensors"), vera::value_error,
                       message_contains("boom"));
  CHECK_THROWS_AS(failing.write(dir / "b.safetensors"), vera::value_error);
  CHECK(dir.entries() == std::vector<std::string>{"a.safetensors"});
  const vera::io::safetensors_file unchanged(dir / "a.safetensors");
  CHECK(unchanged.values<double>("w") == values);

  CHECK_THROWS_AS(writer.write(dir / "missing_dir" / "x.safetensors"), vera::io_error);
  CHECK_THROWS_MATCHES(vera::io::safetensors_file(dir / "nope.safetensors"), vera::io_error,
                       message_contains("No such file"));
  CHECK_THROWS_MATCHES(vera::io::safetensors_file(dir.path()), vera::io_error,
                       message_contains("not a regular file"));
}

TEST_CASE("header length: too short, too large, past the end", "[io][safetensors][hostile]") {
  CHECK_THAT(parse_error({}), Contains("0 bytes is too short"));
  CHECK_THAT(parse_error({1, 2, 3}), Contains("too short"));
  CHECK_THAT(parse_error(vera_test::raw_safetensors("{}", 0, std::uint64_t{1} << 63)),
             Contains("exceeds the limit"));
  CHECK_THAT(parse_error(vera_test::raw_safetensors("{}", 0, 100'000'001)),
             Contains("exceeds the limit"));
  CHECK_THAT(parse_error(vera_test::raw_safetensors("{}", 0, 3)),
             Contains("runs past the end of the file"));
  CHECK_THAT(parse_error(vera_test::raw_safetensors("", 0)), Contains("not valid JSON"));
  CHECK(parse_error(vera_test::raw_safetensors("{}", 0)).empty());        // an empty file is valid
  CHECK(parse_error(vera_test::raw_safetensors("{}      ", 0)).empty());  // padding is whitespace
}

TEST_CASE("hostile headers give format_error naming the problem", "[io][safetensors][hostile]") {
  struct hostile {
    std::string header;
    std::size_t data;
    std::string expected;
  };
  const std::string a4 = tensor_json("a", "F32", "[1]", "[0, 4]");
  const std::vector<hostile> cases{
      {"{", 0, "not valid JSON"},
      {"[1, 2]", 0, "is a JSON array, expected an object"},
      {"{\"a\": 3}", 0, "tensor 'a' is a JSON number"},
      {"{\"a\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", 4, "tensor 'a' has no 'dtype'"},
      {"{\"a\": {\"dtype\": \"F32\", \"data_offsets\": [0, 4]}}", 4, "has no 'shape'"},
      {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1]}}", 4, "has no 'data_offsets'"},
      {"{" + tensor_json("a", "F4", "[2]", "[0, 1]") + "}", 1, "unsupported dtype 'F4'"},
      {"{" + tensor_json("a", "F32", "[-1]", "[0, 4]") + "}", 4,
       "shape[0] is -1, expected a non-negative integer"},
      {"{" + tensor_json("a", "F32", "[1.5]", "[0, 4]") + "}", 4, "shape[0] is a JSON number"},
      {"{" + tensor_json("a", "F32", "\"1\"", "[0, 4]") + "}", 4, "shape is a JSON string"},
      {"{" + tensor_json("a", "F32", "[1]", "[-4, 0]") + "}", 4, "data_offsets[0] is -4"},
      {"{" + tensor_json("a", "F32", "[1]", "[0]") + "}", 4, "expected [begin, end]"},
      {"{" + tensor_json("a", "F32", "[1]", "[8, 4]") + "}", 8, "end before they begin"},
      {"{" + tensor_json("a", "F32", "[3]", "[0, 8]") + "}", 8,
       "need 12 bytes, but data_offsets [0, 8] hold 8"},
      {"{" + tensor_json("a", "F64", "[2]", "[0, 16]") + "}", 8,
       "run past the end of the data region (8 bytes"},
      {"{" + tensor_json("a", "F32", "[2]", "[0, 8]") + ", " +
           tensor_json("b", "F32", "[2]", "[4, 12]") + "}",
       12, "tensor 'b' (data_offsets [4, 12]) overlaps tensor 'a' ([0, 8])"},
      {"{" + a4 + ", " + tensor_json("b", "F32", "[1]", "[8, 12]") + "}", 12,
       "bytes [4, 8) of the data region belong to no tensor"},
      {"{" + a4 + "}", 8, "the data region has 8 bytes but the tensors cover only 4"},
      {"{" + a4 + ", " + a4 + "}", 4, "tensor name 'a' appears twice"},
      {"{\"a\": {\"dtype\": \"F32\", \"dtype\": \"F64\", \"shape\": [1], \"data_offsets\": [0, "
       "4]}}",
       4, "has key 'dtype' twice"},
      {"{\"__metadata__\": {\"k\": 1}}", 0, "__metadata__ entry 'k' is a JSON number"},
      {"{\"__metadata__\": [\"k\"]}", 0, "__metadata__ is a JSON array"},
      {"{\"a\": {\"dtype\": \"F32\", \"shape\": [[[[1]]]], \"data_offsets\": [0, 4]}}", 4,
       "nests JSON deeper"},
      {"{" + tensor_json("a", "U8", "[1099511627776, 1099511627776]", "[0, 0]") + "}", 0,
       "more bytes than 64 bits"},
      {"{" + tensor_json("a", "F32", "[1]", "[0, 18446744073709551616]") + "}", 4,
       "data_offsets[1] is a JSON number"},
      {"{\"\xff\": 1}", 0, "not valid JSON"},
      {"{\"a\": NaN}", 0, "not valid JSON"},
      {"{} trailing", 0, "not valid JSON"},
      {"{\"__metadata__\": {\"k\": 1e999}}", 0, "not valid JSON"},
  };
  for (const auto& c : cases) {
    INFO(c.header);
    CHECK_THAT(parse_error(vera_test::raw_safetensors(c.header, c.data)), Contains(c.expected));
  }
  CHECK_THAT(parse_error(vera_test::raw_safetensors(
                 std::string(100000, '[') + std::string(100000, ']'), 0)),
             Contains("nests JSON deeper"));
  // Zero-sized tensors may share an offset; a null __metadata__ is allowed.
  CHECK(parse_error(vera_test::raw_safetensors(
                        "{\"__metadata__\": null, " + tensor_json("a", "F32", "[0]", "[0, 0]") +
                            ", " + tensor_json("b", "F32", "[0, 3]", "[0, 0]") + "}",
                        0))
            .empty());
}

TEST_CASE("every truncation of a real file is refused, every corruption is safe",
          "[io][safetensors][hostile]") {
  const auto image = vera_test::read_bytes(vera_test::peft_fixtures() / "linear_projection" /
                                           "adapter_model.safetensors");
  REQUIRE(image.size() > 100);
  CHECK(parse_error(image).empty());
  for (std::size_t size = 0; size < image.size(); ++size) {
    const std::vector<unsigned char> prefix(image.begin(),
                                            image.begin() + static_cast<std::ptrdiff_t>(size));
    INFO("truncated to " << size << " bytes");
    REQUIRE_FALSE(parse_error(prefix).empty());
  }
  // Flipping any byte either still parses (data bytes, JSON whitespace) or throws format_error;
  // a parsed view must only reference bytes inside the image.
  for (std::size_t position = 0; position < image.size(); ++position) {
    auto corrupt = image;
    corrupt[position] ^= 0x5Au;
    try {
      const safetensors_view view(corrupt.data(), corrupt.size());
      for (const auto& t : view.tensors()) {
        REQUIRE(view.bytes(t) + t.byte_size() <= corrupt.data() + corrupt.size());
      }
    } catch (const format_error&) {
    }
  }
}
