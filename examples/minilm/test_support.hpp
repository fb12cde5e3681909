// SPDX-License-Identifier: Apache-2.0
// Where examples/minilm's tests find their fixtures and the real model, shared by its test files.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <Eigen/Core>
#include <vera/io/file.hpp>

#include "tokenizer.hpp"

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

/// \brief A rows x cols matrix from nested JSON arrays.
inline Eigen::MatrixXf to_matrix(const nlohmann::json& rows) {
  Eigen::MatrixXf m(static_cast<Eigen::Index>(rows.size()), static_cast<Eigen::Index>(rows.at(0).size()));
  for (Eigen::Index i = 0; i < m.rows(); ++i)
    for (Eigen::Index j = 0; j < m.cols(); ++j) m(i, j) = rows.at(i).at(j).get<float>();
  return m;
}

/// \brief The batch of the fixture's nested id/type/mask arrays (type ids 0 when absent).
inline minilm::token_batch to_batch(const nlohmann::json& reference) {
  const auto ids = reference.at("ids").get<std::vector<std::vector<std::int32_t>>>();
  const auto mask = reference.at("mask").get<std::vector<std::vector<std::int32_t>>>();
  minilm::token_batch batch;
  batch.batch = ids.size();
  batch.length = ids.at(0).size();
  for (std::size_t i = 0; i < ids.size(); ++i) {
    batch.ids.insert(batch.ids.end(), ids[i].begin(), ids[i].end());
    batch.mask.insert(batch.mask.end(), mask[i].begin(), mask[i].end());
  }
  if (reference.contains("type_ids")) {
    for (const auto& row : reference.at("type_ids").get<std::vector<std::vector<std::int32_t>>>())
      batch.type_ids.insert(batch.type_ids.end(), row.begin(), row.end());
  } else {
    batch.type_ids.assign(batch.ids.size(), 0);
  }
  return batch;
}

}  // namespace minilm::test
