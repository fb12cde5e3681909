// SPDX-License-Identifier: Apache-2.0
// Runs the fuzz bodies over the fixtures and past findings in every ordinary test run.
#include <catch2/catch.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "../io/io_support.hpp"
#include "fuzz_targets.hpp"

namespace {

std::vector<std::uint8_t> bytes_of(const std::string& text) { return {text.begin(), text.end()}; }

}  // namespace

TEST_CASE("the fuzz bodies accept every fixture and its truncations", "[fuzz]") {
  for (const auto& entry :
       std::filesystem::recursive_directory_iterator(vera_test::peft_fixtures())) {
    if (!entry.is_regular_file()) continue;
    INFO(entry.path().string());
    const auto image = vera_test::read_bytes(entry.path());
    CHECK(vera_fuzz::safetensors_one_input(image.data(), image.size()) == 0);
    CHECK(vera_fuzz::config_one_input(image.data(), image.size()) == 0);
    for (std::size_t size = 0; size < image.size() && size < 4096; size += 7) {
      CHECK(vera_fuzz::safetensors_one_input(image.data(), size) == 0);
      CHECK(vera_fuzz::config_one_input(image.data(), size) == 0);
    }
  }
}

TEST_CASE("past fuzz findings stay fixed", "[fuzz]") {
  // A number beyond double range: nlohmann_json throws out_of_range, not parse_error.
  const auto config = bytes_of("{\n  \"cpu\":666666e666_ppu\":GGGGGGGGG_ni");
  CHECK(vera_fuzz::config_one_input(config.data(), config.size()) == 0);
  const auto huge = bytes_of(R"({"peft_type": "VERA", "r": 8, "d_initial": 1e999})");
  CHECK(vera_fuzz::config_one_input(huge.data(), huge.size()) == 0);
  const std::string header = R"({"__metadata__": {"k": 1e999}})";
  const auto image = vera_test::raw_safetensors(header, 0);
  CHECK(vera_fuzz::safetensors_one_input(image.data(), image.size()) == 0);
}
