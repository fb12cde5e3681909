// SPDX-License-Identifier: Apache-2.0
// Where examples/minilm's tests find their fixtures and the real model, shared by its test files.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <string>

#include <nlohmann/json.hpp>
#include <vera/io/file.hpp>

namespace minilm::test {

/// \brief tests/fixtures/minilm, written by tools/make_minilm_fixtures.py.
inline std::filesystem::path fixture_dir() { return MINILM_FIXTURE_DIR; }

/// \brief The real model's directory: $MINILM_DATA, else data/minilm in the source tree.
inline std::filesystem::path data_dir() {
  const char* env = std::getenv("MINILM_DATA");
  return env != nullptr && *env != '\0' ? std::filesystem::path(env) : std::filesystem::path(MINILM_DATA_DIR);
}

/// \brief Whether the real model is there; if not, says so in the words ctest looks for.
inline bool have_real_model(const std::string& test) {
  const auto dir = data_dir();
  if (std::filesystem::exists(dir / "model.safetensors") && std::filesystem::exists(dir / "config.json") &&
      std::filesystem::exists(dir / "tokenizer.json"))
    return true;
  std::cout << "minilm: skipped " << test << ": no all-MiniLM-L6-v2 in " << dir.string()
            << " (run scripts/fetch-minilm.sh)\n";
  return false;
}

/// \brief A fixture's JSON.
inline nlohmann::json read_json(const std::filesystem::path& path) {
  return nlohmann::json::parse(vera::io::read_text_file(path, std::size_t{16} << 20));
}

}  // namespace minilm::test
