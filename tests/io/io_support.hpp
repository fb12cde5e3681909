// SPDX-License-Identifier: Apache-2.0
// Helpers shared by the I/O tests: fixture paths, scratch directories, building raw files.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <unistd.h>

#include <catch2/catch.hpp>

#include <vera/io.hpp>

namespace vera_test {

/// The golden files made by tools/make_peft_fixtures.py.
inline std::filesystem::path peft_fixtures() {
#if defined(VERA_FIXTURE_DIR)
  return VERA_FIXTURE_DIR;
#else
  return std::filesystem::path(__FILE__).parent_path().parent_path() / "fixtures" / "peft";
#endif
}

/// A fresh directory under the system temporary directory, removed with everything in it.
class scratch_dir {
 public:
  scratch_dir() {
    static std::atomic<int> counter{0};
    path_ = std::filesystem::temp_directory_path() /
            ("vera_io_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  scratch_dir(const scratch_dir&) = delete;
  scratch_dir& operator=(const scratch_dir&) = delete;
  ~scratch_dir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

  /// Names of the entries directly inside (to prove nothing was left behind).
  std::vector<std::string> entries() const {
    std::vector<std::string> names;
    for (const auto& entry : std::filesystem::directory_iterator(path_))
      names.push_back(entry.path().filename().string());
    return names;
  }

 private:
  std::filesystem::path path_;
};

/// Matches an exception whose message contains `part` (use with CHECK_THROWS_MATCHES, which
/// also checks the exception type).
class message_contains : public Catch::MatcherBase<std::exception> {
 public:
  explicit message_contains(std::string part) : part_(std::move(part)) {}
  bool match(const std::exception& e) const override {
    return std::string(e.what()).find(part_) != std::string::npos;
  }
  std::string describe() const override { return "message contains \"" + part_ + "\""; }

 private:
  std::string part_;
};

/// A safetensors image with the given header text and data bytes (no validation).
inline std::vector<unsigned char> raw_safetensors(const std::string& header, std::size_t data_bytes,
                                                  std::uint64_t declared_length = UINT64_MAX) {
  const std::uint64_t length = declared_length == UINT64_MAX ? header.size() : declared_length;
  std::vector<unsigned char> image(8);
  for (int i = 0; i < 8; ++i)
    image[static_cast<std::size_t>(i)] = static_cast<unsigned char>(length >> (8 * i));
  image.insert(image.end(), header.begin(), header.end());
  image.resize(image.size() + data_bytes, 0);
  return image;
}

inline void write_bytes(const std::filesystem::path& path,
                        const std::vector<unsigned char>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
}

inline std::vector<unsigned char> read_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

/// Splits the model in `base` into two shards under `dir`, tensors alternating, and writes
/// their index; returns the index's path.
inline std::filesystem::path write_two_shards(const vera::io::safetensors_file& base,
                                              const scratch_dir& dir) {
  vera::io::safetensors_writer shards[2];
  nlohmann::json map = nlohmann::json::object();
  std::size_t k = 0;
  for (const auto& t : base.tensors()) {
    const std::size_t s = k++ % 2;
    shards[s].add_bytes(t.name, t.type, t.shape, base.bytes(t));
    map[t.name] = "model-0000" + std::to_string(s + 1) + "-of-00002.safetensors";
  }
  shards[0].write(dir / "model-00001-of-00002.safetensors");
  shards[1].write(dir / "model-00002-of-00002.safetensors");
  const auto index = dir / "model.safetensors.index.json";
  std::ofstream(index, std::ios::binary)
      << nlohmann::json{{"metadata", {{"total_size", 0}}}, {"weight_map", map}}.dump(1);
  return index;
}

}  // namespace vera_test
