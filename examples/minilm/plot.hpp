// SPDX-License-Identifier: Apache-2.0
// A minimal PNG writer (RGB, zlib stored blocks, CRC-32, Adler-32) and a bar chart drawn on it
// with a 3 x 5 pixel font, so that the minilm program writes its own plot without a plotting
// library.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <vera/io/error.hpp>

namespace minilm::plot {

/// \brief An RGB image, row-major, 8 bits per channel.
struct image {
  int width = 0, height = 0;
  std::vector<std::uint8_t> rgb;

  image(int w, int h) : width(w), height(h), rgb(static_cast<std::size_t>(w) * h * 3, 255) {}

  void set(int x, int y, std::array<std::uint8_t, 3> color) {
    if (x < 0 || y < 0 || x >= width || y >= height) return;
    const auto at = (static_cast<std::size_t>(y) * width + x) * 3;
    std::copy(color.begin(), color.end(), rgb.begin() + static_cast<std::ptrdiff_t>(at));
  }
  void fill(int x0, int y0, int x1, int y1, std::array<std::uint8_t, 3> color) {
    for (int y = std::min(y0, y1); y <= std::max(y0, y1); ++y)
      for (int x = std::min(x0, x1); x <= std::max(x0, x1); ++x) set(x, y, color);
  }
};

namespace detail {

inline std::uint32_t crc32(const std::uint8_t* data, std::size_t size, std::uint32_t crc = 0) {
  static const auto table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t n = 0; n < 256; ++n) {
      std::uint32_t c = n;
      for (int k = 0; k < 8; ++k) c = (c & 1u) != 0 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[n] = c;
    }
    return t;
  }();
  crc = ~crc;
  for (std::size_t i = 0; i < size; ++i) crc = table[(crc ^ data[i]) & 0xFFu] ^ (crc >> 8);
  return ~crc;
}

inline void put32(std::vector<std::uint8_t>& out, std::uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<std::uint8_t>(v >> shift));
}

inline void chunk(std::vector<std::uint8_t>& png, const char* type, const std::vector<std::uint8_t>& data) {
  put32(png, static_cast<std::uint32_t>(data.size()));
  std::vector<std::uint8_t> body(type, type + 4);
  body.insert(body.end(), data.begin(), data.end());
  png.insert(png.end(), body.begin(), body.end());
  put32(png, crc32(body.data(), body.size()));
}

/// zlib stream of `raw` in stored (uncompressed) deflate blocks.
inline std::vector<std::uint8_t> zlib_stored(const std::vector<std::uint8_t>& raw) {
  std::vector<std::uint8_t> out = {0x78, 0x01};
  std::size_t pos = 0;
  do {
    const std::size_t size = std::min<std::size_t>(65535, raw.size() - pos);
    const bool last = pos + size == raw.size();
    out.push_back(last ? 1 : 0);
    out.push_back(static_cast<std::uint8_t>(size & 0xFF));
    out.push_back(static_cast<std::uint8_t>(size >> 8));
    out.push_back(static_cast<std::uint8_t>(~size & 0xFF));
    out.push_back(static_cast<std::uint8_t>((~size >> 8) & 0xFF));
    out.insert(out.end(), raw.begin() + static_cast<std::ptrdiff_t>(pos),
               raw.begin() + static_cast<std::ptrdiff_t>(pos + size));
    pos += size;
  } while (pos < raw.size());
  std::uint32_t a = 1, b = 0;
  for (const std::uint8_t byte : raw) {
    a = (a + byte) % 65521u;
    b = (b + a) % 65521u;
  }
  put32(out, (b << 16) | a);
  return out;
}

/// 3 x 5 glyphs, one row of 3 bits per entry (most significant bit left).
inline const std::array<std::uint8_t, 5>* glyph(char c) {
  static const std::array<std::pair<char, std::array<std::uint8_t, 5>>, 31> font = {{
      {'A', {2, 5, 7, 5, 5}}, {'C', {3, 4, 4, 4, 3}}, {'D', {6, 5, 5, 5, 6}}, {'E', {7, 4, 6, 4, 7}},
      {'H', {5, 5, 7, 5, 5}}, {'L', {4, 4, 4, 4, 7}}, {'O', {2, 5, 5, 5, 2}}, {'R', {6, 5, 6, 5, 5}},
      {'S', {3, 4, 2, 1, 6}}, {'T', {7, 2, 2, 2, 2}}, {'U', {5, 5, 5, 5, 7}}, {'V', {5, 5, 5, 5, 2}},
      {'Y', {5, 5, 2, 2, 2}}, {'N', {6, 5, 5, 5, 5}}, {'0', {7, 5, 5, 5, 7}}, {'1', {2, 6, 2, 2, 7}},
      {'2', {6, 1, 2, 4, 7}}, {'3', {6, 1, 2, 1, 6}}, {'4', {5, 5, 7, 1, 1}}, {'5', {7, 4, 6, 1, 6}},
      {'6', {3, 4, 7, 5, 7}}, {'7', {7, 1, 2, 2, 2}}, {'8', {7, 5, 7, 5, 7}}, {'9', {7, 5, 7, 1, 6}},
      {'.', {0, 0, 0, 0, 2}}, {',', {0, 0, 0, 2, 4}}, {'(', {1, 2, 2, 2, 1}}, {')', {4, 2, 2, 2, 4}},
      {'-', {0, 0, 7, 0, 0}}, {'=', {0, 7, 0, 7, 0}}, {'F', {7, 4, 6, 4, 4}}}};
  for (const auto& [key, rows] : font)
    if (key == c) return &rows;
  return nullptr;
}

}  // namespace detail

/// \brief Writes `text` (upper-case letters of the font, digits, . , ( ) - =, spaces) with its
///        top-left corner at (x, y), each font pixel `scale` pixels wide.
inline void text(image& img, int x, int y, const std::string& s, int scale, std::array<std::uint8_t, 3> color) {
  for (const char c : s) {
    if (const auto* rows = detail::glyph(c)) {
      for (int r = 0; r < 5; ++r)
        for (int col = 0; col < 3; ++col)
          if (((*rows)[static_cast<std::size_t>(r)] >> (2 - col)) & 1)
            img.fill(x + col * scale, y + r * scale, x + (col + 1) * scale - 1, y + (r + 1) * scale - 1, color);
    }
    x += 4 * scale;
  }
}

/// \brief Width in pixels of `s` as text() draws it.
inline int text_width(const std::string& s, int scale) { return static_cast<int>(s.size()) * 4 * scale - scale; }

/// \brief Encodes `img` as PNG (8-bit RGB, no filter, stored deflate blocks) into `path`.
/// \throws vera::io_error when the file cannot be written.
inline void write_png(const image& img, const std::filesystem::path& path) {
  std::vector<std::uint8_t> raw;
  const auto row_bytes = static_cast<std::size_t>(img.width) * 3;
  for (int y = 0; y < img.height; ++y) {
    raw.push_back(0);  // filter: none
    const auto begin = img.rgb.begin() + static_cast<std::ptrdiff_t>(y * row_bytes);
    raw.insert(raw.end(), begin, begin + static_cast<std::ptrdiff_t>(row_bytes));
  }
  std::vector<std::uint8_t> png = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  std::vector<std::uint8_t> header;
  detail::put32(header, static_cast<std::uint32_t>(img.width));
  detail::put32(header, static_cast<std::uint32_t>(img.height));
  header.insert(header.end(), {8, 2, 0, 0, 0});  // 8 bits, RGB, deflate, no filter, no interlace
  detail::chunk(png, "IHDR", header);
  detail::chunk(png, "IDAT", detail::zlib_stored(raw));
  detail::chunk(png, "IEND", {});
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(png.data()), static_cast<std::streamsize>(png.size()));
  if (!out) throw vera::io_error("cannot write " + path.string());
}

/// \brief One bar: a label, the values over seeds (drawn as dots), their mean (the bar) and the
///        range (an error bar from the smallest to the largest).
struct bar {
  std::string label;
  std::vector<double> values;
};

/// \brief A bar chart of `bars` on a value axis from `low` to `high` with grid lines every `step`.
inline image bar_chart(const std::string& title, const std::vector<bar>& bars, double low, double high, double step) {
  const int width = 160 + 150 * static_cast<int>(bars.size()), height = 420, scale = 3;
  const int left = 90, right = width - 30, top = 60, bottom = height - 60;
  image img(width, height);
  const std::array<std::uint8_t, 3> black{0, 0, 0}, grid{220, 220, 220};
  const std::array<std::array<std::uint8_t, 3>, 5> colors = {
      {{120, 120, 120}, {31, 119, 180}, {255, 127, 14}, {44, 160, 44}, {148, 103, 189}}};
  const auto y_of = [&](double v) {
    return bottom - static_cast<int>(std::lround((v - low) / (high - low) * (bottom - top)));
  };
  text(img, (width - text_width(title, scale)) / 2, 20, title, scale, black);
  for (double v = low; v <= high + 1e-9; v += step) {
    const int y = y_of(v);
    img.fill(left, y, right, y, grid);
    char tick[16];
    std::snprintf(tick, sizeof tick, "%.2f", v);
    text(img, left - 10 - text_width(tick, scale), y - 7, tick, scale, black);
  }
  img.fill(left, top, left, bottom, black);
  img.fill(left, bottom, right, bottom, black);
  const int slot = (right - left) / static_cast<int>(bars.size());
  for (std::size_t i = 0; i < bars.size(); ++i) {
    const auto& b = bars[i];
    if (b.values.empty()) continue;
    double mean = 0;
    for (const double v : b.values) mean += v;
    mean /= static_cast<double>(b.values.size());
    const auto [lo, hi] = std::minmax_element(b.values.begin(), b.values.end());
    const int center = left + slot * static_cast<int>(i) + slot / 2;
    img.fill(center - slot / 4, y_of(std::max(mean, low)), center + slot / 4, bottom - 1, colors[i % colors.size()]);
    img.fill(center, y_of(*hi), center, y_of(*lo), black);
    img.fill(center - 8, y_of(*hi), center + 8, y_of(*hi), black);
    img.fill(center - 8, y_of(*lo), center + 8, y_of(*lo), black);
    for (const double v : b.values) img.fill(center + 14, y_of(v) - 2, center + 18, y_of(v) + 2, black);
    text(img, center - text_width(b.label, scale) / 2, bottom + 15, b.label, scale, black);
  }
  return img;
}

}  // namespace minilm::plot
