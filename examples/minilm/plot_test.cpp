// SPDX-License-Identifier: Apache-2.0
// The PNG writer behind the minilm program's plot: its checksums against published values, and a
// small image's bytes read back.
#include <catch2/catch.hpp>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "plot.hpp"

TEST_CASE("PNG checksums and stored deflate blocks", "[plot]") {
  const std::string iend = "IEND";
  // Every PNG ends with this chunk: its CRC-32 is the well-known AE 42 60 82.
  CHECK(minilm::plot::detail::crc32(reinterpret_cast<const std::uint8_t*>(iend.data()), iend.size()) == 0xAE426082u);
  const std::string text = "Wikipedia";  // Adler-32 0x11E60398, the textbook example
  const auto z = minilm::plot::detail::zlib_stored(std::vector<std::uint8_t>(text.begin(), text.end()));
  REQUIRE(z.size() == 2 + 5 + text.size() + 4);
  CHECK(z[2] == 1);  // one final stored block
  CHECK((z[3] | (z[4] << 8)) == static_cast<int>(text.size()));
  CHECK(static_cast<std::size_t>(z[5] | (z[6] << 8)) == (~text.size() & 0xFFFF));
  CHECK(z[z.size() - 4] == 0x11);
  CHECK(z[z.size() - 1] == 0x98);
  // More than one block's worth: blocks of at most 65,535 bytes, only the last one final.
  const auto big = minilm::plot::detail::zlib_stored(std::vector<std::uint8_t>(70000, 7));
  CHECK(big.size() == 2 + 2 * 5 + 70000 + 4);
  CHECK(big[2] == 0);
  CHECK(big[2 + 5 + 65535] == 1);
}

TEST_CASE("the font draws every label and title the minilm program writes", "[plot]") {
  for (const std::string label : {"HEAD ONLY", "VERA R=256", "LORA R=8", "FULL", "VERA ALL", "TEST ACCURACY, 3 SEEDS",
                                  "0.85"}) {
    for (const char c : label) {
      CAPTURE(label, c);
      CHECK((c == ' ' || minilm::plot::detail::glyph(c) != nullptr));
    }
  }
}

TEST_CASE("a bar chart is written as a PNG of the expected size", "[plot]") {
  const auto img = minilm::plot::bar_chart("TEST ACCURACY, 3 SEEDS",
                                           {{"HEAD ONLY", {0.75, 0.76}}, {"VERA R=256", {0.80, 0.81}}}, 0.6, 0.9, 0.05);
  const auto path = std::filesystem::temp_directory_path() / "minilm_plot_test.png";
  minilm::plot::write_png(img, path);
  std::ifstream in(path, std::ios::binary);
  const std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  REQUIRE(bytes.size() > 33);
  CHECK(std::string(bytes.begin() + 1, bytes.begin() + 4) == "PNG");
  const auto be32 = [&](std::size_t at) {
    return (std::uint32_t{bytes[at]} << 24) | (std::uint32_t{bytes[at + 1]} << 16) | (std::uint32_t{bytes[at + 2]} << 8) |
           std::uint32_t{bytes[at + 3]};
  };
  CHECK(be32(16) == static_cast<std::uint32_t>(img.width));
  CHECK(be32(20) == static_cast<std::uint32_t>(img.height));
  // Raw size: one filter byte per row plus 3 bytes per pixel, in stored blocks, plus the chunks.
  const std::size_t raw = static_cast<std::size_t>(img.height) * (1 + 3 * static_cast<std::size_t>(img.width));
  CHECK(bytes.size() == 8 + 25 + 12 + 2 + 5 * ((raw + 65534) / 65535) + raw + 4 + 12);
  std::filesystem::remove(path);
}
