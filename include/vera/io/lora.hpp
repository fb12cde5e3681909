// SPDX-License-Identifier: Apache-2.0
// Exact VeRA -> LoRA conversion: factors per layer and PEFT LoRA adapter directories.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "vera/adapter/adapter.hpp"
#include "vera/adapter/projection.hpp"
#include "vera/adapter/workspace.hpp"
#include "vera/backend/cpu/common.hpp"
#include "vera/core/error.hpp"
#include "vera/io/config.hpp"
#include "vera/io/dtype.hpp"
#include "vera/io/model_adapter.hpp"
#include "vera/io/peft.hpp"
#include "vera/io/safetensors.hpp"

namespace vera::io {

/// \brief LoRA factors of one VeRA layer: lora_a = A[:r, :in] (r x in) and lora_b = Λb B Λd
///        (out x r), so that lora_b * lora_a = ΔW (before the fan_in_fan_out transpose).
template <class T>
struct lora_factors {
  row_matrix<T> a;  ///< lora_A, r x in
  row_matrix<T> b;  ///< lora_B, out x r
};

/// \brief The exact LoRA form of `layer` (LoRA scaling alpha / r = 1).
template <class T>
lora_factors<T> to_lora(const adapter<T>& layer) {
  lora_factors<T> out;
  out.a = layer.a();
  // The merge evaluator's own folded scale, so that lora_B rounds exactly as ΔW's factor does.
  workspace<T> scratch;
  out.b = cpu::scaled_b(layer, scratch);
  return out;
}
template <class T>
lora_factors<T> to_lora(adapter<T>&&) = delete;

/// \brief Writes `model` as a PEFT LoRA adapter directory that reproduces it exactly:
///        lora_A = A[:r, :in], lora_B = Λb B Λd, lora_alpha = r, target_modules = layer paths.
/// \throws value_error for a model without layers; rank_error when layers have different
///         ranks; io_error when writing fails. Nothing is written on error.
template <class T>
void export_lora(const model_adapter<T>& model, const std::filesystem::path& dir,
                 const vera_config& source = {}, dtype stored = dtype::f32) {
  if (model.empty()) throw value_error("export_lora: the model adapter has no layers");
  safetensors_writer weights;
  weights.set_metadata("format", "pt");
  std::vector<std::string> targets;
  index rank = 0;
  for (const auto& [path, layer] : model) {
    const auto factors = to_lora(layer);
    weights.add(peft_lora_a_key(path), stored,
                {static_cast<std::uint64_t>(factors.a.rows()),
                 static_cast<std::uint64_t>(factors.a.cols())},
                factors.a.data());
    weights.add(peft_lora_b_key(path), stored,
                {static_cast<std::uint64_t>(factors.b.rows()),
                 static_cast<std::uint64_t>(factors.b.cols())},
                factors.b.data());
    targets.push_back(path);
    if (rank != 0 && layer.rank() != rank) {
      throw rank_error("export_lora: layers have ranks " + std::to_string(rank) + " and " +
                       std::to_string(layer.rank()) + "; one LoRA config has one r");
    }
    rank = layer.rank();
  }
  vera_config settings = source;
  settings.fan_in_fan_out = model.options().fan_in_fan_out;
  settings.vera_dropout = model.options().dropout;
  detail::write_adapter_directory(dir, weights, lora_config_json(settings, rank, targets));
}

}  // namespace vera::io
