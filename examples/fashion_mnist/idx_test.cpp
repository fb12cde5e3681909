// SPDX-License-Identifier: Apache-2.0
// Tests for the IDX reader: valid files, every malformed-header case, gzip, and random corruption.
#include <catch2/catch.hpp>

#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "idx.hpp"

namespace {

std::vector<std::uint8_t> make_idx(const std::vector<std::uint32_t>& dims) {
  std::vector<std::uint8_t> bytes = {0, 0, 0x08, static_cast<std::uint8_t>(dims.size())};
  std::size_t n = 1;
  for (const std::uint32_t d : dims) {
    for (int shift = 24; shift >= 0; shift -= 8) bytes.push_back(static_cast<std::uint8_t>(d >> shift));
    n *= d;
  }
  for (std::size_t i = 0; i < n; ++i) bytes.push_back(static_cast<std::uint8_t>(i * 7 + 3));
  return bytes;
}

std::filesystem::path temp_path(const std::string& name) {
  return std::filesystem::temp_directory_path() /
         ("vera_idx_test_" + std::to_string(::getpid()) + "_" + name);
}

void write_gzip(const std::filesystem::path& path, const std::vector<std::uint8_t>& bytes) {
  gzFile f = gzopen(path.string().c_str(), "wb");
  REQUIRE(f != nullptr);
  REQUIRE(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())) == static_cast<int>(bytes.size()));
  REQUIRE(gzclose(f) == Z_OK);
}

std::vector<std::uint8_t> read_raw(const std::filesystem::path& path) {
  std::vector<std::uint8_t> bytes(std::filesystem::file_size(path));
  std::FILE* f = std::fopen(path.string().c_str(), "rb");
  REQUIRE(f != nullptr);
  REQUIRE(std::fread(bytes.data(), 1, bytes.size(), f) == bytes.size());
  std::fclose(f);
  return bytes;
}

void write_raw(const std::filesystem::path& path, const std::vector<std::uint8_t>& bytes) {
  std::FILE* f = std::fopen(path.string().c_str(), "wb");
  REQUIRE(f != nullptr);
  REQUIRE(std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size());
  std::fclose(f);
}

}  // namespace

TEST_CASE("a valid IDX array parses with its dimensions and data", "[idx]") {
  const auto bytes = make_idx({3, 2, 5});
  const auto a = fashion::parse_idx(bytes, "x");
  CHECK(a.dims == std::vector<std::size_t>{3, 2, 5});
  REQUIRE(a.data.size() == 30);
  CHECK(a.data[0] == 3);
  CHECK(a.data[29] == static_cast<std::uint8_t>(29 * 7 + 3));
  CHECK(fashion::parse_idx(make_idx({0, 28, 28}), "empty").data.empty());
}

TEST_CASE("malformed IDX headers are rejected with the fault named", "[idx][errors]") {
  using Catch::Contains;
  auto bytes = make_idx({4, 3});
  CHECK_THROWS_WITH(fashion::parse_idx({0, 0, 8}, "f"), Contains("f: too short"));
  auto bad = bytes;
  bad[1] = 1;
  CHECK_THROWS_WITH(fashion::parse_idx(bad, "f"), Contains("magic"));
  bad = bytes;
  bad[2] = 0x0D;  // float32
  CHECK_THROWS_WITH(fashion::parse_idx(bad, "f"), Contains("type code 13"));
  bad = bytes;
  bad[3] = 0;
  CHECK_THROWS_WITH(fashion::parse_idx(bad, "f"), Contains("dimension count 0"));
  bad[3] = 9;
  CHECK_THROWS_WITH(fashion::parse_idx(bad, "f"), Contains("dimension count 9"));
  bad = bytes;
  bad.resize(9);
  CHECK_THROWS_WITH(fashion::parse_idx(bad, "f"), Contains("truncated header"));
  bad = bytes;
  bad.pop_back();
  CHECK_THROWS_WITH(fashion::parse_idx(bad, "f"), Contains("12 data bytes") && Contains("truncated"));
  bad = bytes;
  bad.push_back(0);
  CHECK_THROWS_WITH(fashion::parse_idx(bad, "f"), Contains("trailing"));
  // Dimensions whose product overflows, or is merely huge, never allocate.
  const auto huge = make_idx({0, 0, 0, 0});
  auto claim = huge;
  for (std::size_t i = 4; i < claim.size(); ++i) claim[i] = 0xFF;
  CHECK_THROWS_WITH(fashion::parse_idx(claim, "f"), Contains("more than"));
  CHECK_THROWS_WITH(fashion::parse_idx(make_idx({100}), "f", 99), Contains("more than 99"));
}

TEST_CASE("gzip-compressed and plain files read the same; corrupt gzip is an error", "[idx][gzip]") {
  const auto bytes = make_idx({10, 28, 28});
  const auto gz = temp_path("a.gz"), plain = temp_path("a"), cut = temp_path("cut.gz"),
             flipped = temp_path("flipped.gz");
  write_gzip(gz, bytes);
  write_raw(plain, bytes);
  CHECK(fashion::read_idx(gz.string()).data == fashion::read_idx(plain.string()).data);

  auto compressed = read_raw(gz);
  auto truncated = compressed;
  truncated.resize(compressed.size() / 2);
  write_raw(cut, truncated);
  CHECK_THROWS_AS(fashion::read_idx(cut.string()), fashion::idx_error);

  auto damaged = compressed;
  damaged[damaged.size() - 6] ^= 0x5A;  // inside the CRC-32 / length trailer
  write_raw(flipped, damaged);
  CHECK_THROWS_AS(fashion::read_maybe_gzip(flipped.string()), fashion::idx_error);

  CHECK_THROWS_WITH(fashion::read_idx(temp_path("missing").string()), Catch::Contains("cannot open"));
  CHECK_THROWS_WITH(fashion::read_maybe_gzip(gz.string(), 100), Catch::Contains("more than 100"));
  for (const auto& p : {gz, plain, cut, flipped}) std::filesystem::remove(p);
}

TEST_CASE("randomly corrupted files either parse consistently or throw idx_error", "[idx][fuzz]") {
  std::mt19937 rng(12345);
  const auto valid = make_idx({6, 5, 4});
  const auto gz = temp_path("fuzz.gz");
  write_gzip(gz, valid);
  const auto compressed = read_raw(gz);
  const auto mutated_path = temp_path("fuzz_mutated");
  int parsed = 0, rejected = 0;
  for (int round = 0; round < 400; ++round) {
    // Raw bytes: flips, truncation and growth anywhere, header included.
    auto bytes = valid;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      switch (rng() % 3) {
        case 0: bytes[rng() % bytes.size()] ^= static_cast<std::uint8_t>(1u << (rng() % 8)); break;
        case 1: bytes.resize(rng() % (bytes.size() + 1)); break;
        default: bytes.insert(bytes.begin() + static_cast<long>(rng() % (bytes.size() + 1)), static_cast<std::uint8_t>(rng())); break;
      }
      if (bytes.empty()) break;
    }
    try {
      const auto a = fashion::parse_idx(bytes, "fuzz", 1 << 20);
      std::size_t n = 1;
      for (const auto d : a.dims) n *= d;
      CHECK(n == a.data.size());
      ++parsed;
    } catch (const fashion::idx_error&) {
      ++rejected;
    }
    // Compressed bytes: the gzip layer must report corruption, never crash.
    auto packed = compressed;
    packed[rng() % packed.size()] ^= static_cast<std::uint8_t>(1u << (rng() % 8));
    if (rng() % 2 == 0) packed.resize(rng() % packed.size());
    write_raw(mutated_path, packed);
    try {
      (void)fashion::read_idx(mutated_path.string());
    } catch (const fashion::idx_error&) {
    }
  }
  CHECK(rejected > 0);
  CHECK(parsed + rejected == 400);
  std::filesystem::remove(gz);
  std::filesystem::remove(mutated_path);
}
