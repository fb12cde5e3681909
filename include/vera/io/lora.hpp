// SPDX-License-Identifier: Apache-2.0
// Exact VeRA -> LoRA conversion: factors per layer and PEFT LoRA adapter directories.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "vera/adapter/adapter.hpp"
#include "vera/adapter/projection.hpp"
#include "vera/backend/cpu/merge.hpp"
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
  out.b = vera::scaled_b(layer);
  return out;
}
template <class T>
lora_factors<T> to_lora(adapter<T>&&) = delete;

namespace detail {

/// \brief PEFT LoRA's `bias` value for a VeRA `bias` ("vera_only" is LoRA's "lora_only").
inline const char* lora_bias_name(bias_mode mode) {
  return mode == bias_mode::vera_only ? "lora_only" : bias_name(mode);
}

}  // namespace detail

/// \brief Writes `model` as a PEFT LoRA adapter directory that reproduces it exactly:
///        lora_A = A[:r, :in], lora_B = Λb B Λd, lora_alpha = r, target_modules = layer paths.
///
/// `trained` (modules_to_save copies and trained biases, as load_peft_adapter keeps them) is
/// copied under the same keys and dtype: PEFT LoRA adapters follow the same convention, and the
/// LoRA config then takes `modules_to_save` and `bias` ("vera_only" -> "lora_only") from
/// `source`. Without `trained` the export carries the adapted layers only.
/// \throws value_error for a model without layers, or trained tensors that `source` would not
///         make PEFT load (see save_peft_adapter); rank_error when layers have different ranks;
///         io_error when writing fails. Nothing is written on error.
template <class T>
void export_lora(const model_adapter<T>& model, const std::filesystem::path& dir,
                 const vera_config& source = {}, dtype stored = dtype::f32,
                 const std::vector<trained_tensor>& trained = {}) {
  if (model.empty()) throw value_error("export_lora: the model adapter has no layers");
  detail::check_trained_writable(trained, source, "export_lora");
  safetensors_writer weights;
  weights.set_metadata("format", "pt");
  std::vector<std::string> targets;
  index rank = 0;
  for (const auto& [path, layer] : model) {
    const auto factors = to_lora(layer);
    weights.add(detail::peft_lora_a_key(path), stored,
                {static_cast<std::uint64_t>(factors.a.rows()),
                 static_cast<std::uint64_t>(factors.a.cols())},
                factors.a.data());
    weights.add(detail::peft_lora_b_key(path), stored,
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
  detail::add_trained(weights, trained);
  vera_config settings = source;
  settings.fan_in_fan_out = model.options().fan_in_fan_out;
  settings.vera_dropout = model.options().dropout;
  auto config = lora_config_json(settings, rank, targets);
  if (!trained.empty()) {
    config["modules_to_save"] = detail::optional_json(source.modules_to_save);
    config["bias"] = detail::lora_bias_name(source.bias);
  }
  detail::write_adapter_directory(dir, weights, config);
}

/// \brief export_lora of a loaded adapter: its layers, its config and its trained tensors.
template <class T>
void export_lora(const peft_adapter<T>& adapter, const std::filesystem::path& dir,
                 dtype stored = dtype::f32) {
  export_lora(adapter.model, dir, adapter.config, stored, adapter.trained);
}

}  // namespace vera::io
