// SPDX-License-Identifier: Apache-2.0
// Reading Debian's fortune files and the fixed hash split of the topic task.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>

#include "fortunes.hpp"

TEST_CASE("fortunes are split on '%' lines, overstrikes reduced and blanks dropped", "[fortunes]") {
  CHECK(minilm::clean_fortune("  _\bb_\bo_\bl_\bd text\n") == "bold text");
  CHECK(minilm::clean_fortune("\n \t\n").empty());
  CHECK(minilm::fnv1a("") == 0xcbf29ce484222325ull);
  CHECK(minilm::fnv1a("a") == 0xaf63dc4c8601ec8cull);  // FNV-1a's published value

  const auto dir = std::filesystem::temp_directory_path() / ("minilm_fortunes_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "one") << "first\nline two\n%\n\n%\nsecond\n%\nfirst\nline two\n%\nthird";
  std::ofstream(dir / "two") << "other\n";
  const auto texts = minilm::read_fortunes(dir / "one");
  REQUIRE(texts.size() == 4);
  CHECK(texts[0] == "first\nline two");
  CHECK(texts[3] == "third");

  const auto split = minilm::load_topic_split(dir, {"one", "two"}, 10, 10);
  CHECK(split.train.size() + split.test.size() == 4);  // the repeated fortune is kept once
  for (const auto& e : split.test) CHECK(minilm::fnv1a(e.text) % 5 == 0);
  for (const auto& e : split.train) CHECK(minilm::fnv1a(e.text) % 5 != 0);
  CHECK(minilm::load_topic_split(dir, {"one", "two"}, 1, 0).train.size() <= 2);
  CHECK_THROWS_AS(minilm::read_fortunes(dir / "three"), vera::io_error);
  std::filesystem::remove_all(dir);
}
