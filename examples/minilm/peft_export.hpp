// SPDX-License-Identifier: Apache-2.0
// Saving a trained BertForSequenceClassification adapter in PEFT's format: VeRA on query and
// value, the classifier head under modules_to_save (what PEFT does for task type SEQ_CLS).
#pragma once

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include <vera/io.hpp>

#include "bert.hpp"

namespace minilm {

/// \brief A float32 tensor (row-major data, `shape`) of a PEFT adapter's modules_to_save.
inline vera::io::trained_tensor module_to_save_tensor(const std::string& name, const float* row_major,
                                                      std::vector<std::uint64_t> shape) {
  vera::io::trained_tensor t;
  t.key = t.target = name;
  t.kind = vera::io::trained_kind::module_to_save;
  t.type = vera::io::dtype::f32;
  t.shape = std::move(shape);
  t.bytes.resize(t.expected_bytes());
  std::memcpy(t.bytes.data(), row_major, t.bytes.size());  // little-endian hosts, as the writer assumes
  return t;
}

/// \brief Writes `adapters` (VeRA on query and value) with `head` as classifier.weight/.bias under
///        modules_to_save into `dir` (adapter_config.json, adapter_model.safetensors), with A and
///        B saved as PEFT does by default, so that loading does not depend on how the CPU rounds a
///        regenerated projection.
/// \throws vera::io_error when writing fails.
inline void save_classifier_adapter(const vera::io::model_adapter<float>& adapters, const linear_weights& head,
                                    const std::filesystem::path& dir) {
  vera::io::vera_config config;
  config.task_type = "SEQ_CLS";
  config.target_modules.names = {"query", "value"};
  config.modules_to_save = std::vector<std::string>{"classifier"};
  config.base_model_name_or_path = "sentence-transformers/all-MiniLM-L6-v2";
  const vera::row_matrix<float> weight = head.weight;
  const auto labels = static_cast<std::uint64_t>(weight.rows()), hidden = static_cast<std::uint64_t>(weight.cols());
  const std::vector<vera::io::trained_tensor> tensors = {
      module_to_save_tensor("classifier.bias", head.bias.data(), {labels}),
      module_to_save_tensor("classifier.weight", weight.data(), {labels, hidden})};
  vera::io::save_options options;
  options.save_projection = true;
  vera::io::save_peft_adapter(adapters, dir, options, config, tensors);
}

}  // namespace minilm
