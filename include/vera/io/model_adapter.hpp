// SPDX-License-Identifier: Apache-2.0
// A model-level VeRA adapter: named layers (PEFT module paths) sharing one projection.
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>

#include "vera/adapter/adapter.hpp"
#include "vera/adapter/options.hpp"
#include "vera/adapter/projection.hpp"
#include "vera/core/error.hpp"
#include "vera/core/projection_spec.hpp"
#include "vera/core/shape.hpp"

namespace vera::io {

/// \brief Input and output features of one base layer (nn.Linear(in, out) or Conv1D(out, in)),
///        and how its weight is stored when that is the layer's own.
struct layer_shape {
  index in = 0;  ///< input features
  index out = 0;  ///< output features
  /// The weight's layout: true for in x out (transformers' Conv1D), false for out x in
  /// (nn.Linear); empty: the model's adapter_options::fan_in_fan_out. A model mixing both kinds
  /// needs it per layer (adapted_layer_shapes reads it from the weights).
  std::optional<bool> fan_in_fan_out = std::nullopt;

  friend bool operator==(const layer_shape& a, const layer_shape& b) {
    return a.in == b.in && a.out == b.out && a.fan_in_fan_out == b.fan_in_fan_out;
  }
  friend bool operator!=(const layer_shape& a, const layer_shape& b) { return !(a == b); }
};

/// \brief Base layer shapes by module path, e.g. "model.layers.0.self_attn.q_proj".
using layer_shapes = std::map<std::string, layer_shape>;

/// \brief The element-wise maximum of in and out over `layers` ({0, 0} when empty): the extents
///        PEFT gives the shared projection.
inline layer_shape max_extents(const layer_shapes& layers) {
  layer_shape largest;
  for (const auto& [path, shape] : layers) {
    largest.in = std::max(largest.in, shape.in);
    largest.out = std::max(largest.out, shape.out);
  }
  return largest;
}

/// \brief The VeRA adapters of a whole model: one adapter<T> per adapted layer, keyed by module
///        path, all sharing one projection<T>, with one set of options.
///
/// Layers are kept in path order, so iteration and saved files are deterministic.
template <class T>
class model_adapter {
 public:
  using layer_map = std::map<std::string, adapter<T>>;  ///< Adapters by module path.

  /// \brief Creates an adapter per layer on `shared`, initialised as `options` says; a layer
  ///        whose shape names its own layout (layer_shape::fan_in_fan_out) gets that layout.
  ///
  /// Throws value_error for an empty path, and what adapter<T> throws for a layer that does not
  /// fit the projection (shape_error, rank_error) or bad options (value_error), with the path
  /// in the message.
  model_adapter(projection<T> shared, const layer_shapes& layers,
                const adapter_options& options = {})
      : projection_(std::move(shared)), options_(options) {
    for (const auto& [path, shape] : layers) {
      if (path.empty()) throw value_error("model_adapter: a layer has an empty module path");
      adapter_options own = options_;
      own.fan_in_fan_out = shape.fan_in_fan_out.value_or(options_.fan_in_fan_out);
      try {
        layers_.try_emplace(path, projection_, shape.in, shape.out, own);
      } catch (const rank_error& e) {
        throw rank_error("layer '" + path + "': " + e.what());
      } catch (const shape_error& e) {
        throw shape_error("layer '" + path + "': " + e.what());
      } catch (const value_error& e) {
        throw value_error("layer '" + path + "': " + e.what());
      }
    }
  }

  /// \brief Generates the projection PEFT would for these layers: rank x max in, max out x rank
  ///        (element-wise maxima over `layers`) from `seed`.
  /// \throws value_error for a non-positive rank, an empty `layers` (zero extents) or an empty
  ///         path; otherwise as the constructor.
  static model_adapter generate(std::uint64_t seed, index rank, const layer_shapes& layers,
                                const adapter_options& options = {},
                                generator kind = generator::peft,
                                peft_rounding rounding = peft_rounding::fused) {
    const layer_shape largest = max_extents(layers);
    return model_adapter(
        projection<T>(projection_spec{seed, rank, largest.in, largest.out, kind, rounding}), layers,
        options);
  }

  /// \brief The projection every layer's adapter slices.
  const projection<T>& shared_projection() const noexcept { return projection_; }
  /// \brief The options every layer's adapter was created with (a layer's own layout aside:
  ///        `at(path).options().fan_in_fan_out` is the layer's).
  const adapter_options& options() const noexcept { return options_; }
  /// \brief Number of adapted layers.
  std::size_t size() const noexcept { return layers_.size(); }
  /// \brief True when no layer is adapted.
  bool empty() const noexcept { return layers_.empty(); }
  /// \brief Whether layer `path` is adapted.
  bool contains(const std::string& path) const { return layers_.count(path) != 0; }

  /// \brief The adapter of layer `path` (a module path such as "model.layers.0.q_proj", without
  ///        PEFT's "base_model.model." key prefix).
  /// \throws value_error naming the path when absent, with the path it probably meant (a PEFT
  ///         key with its prefix or a tensor suffix stripped) and a few adapted layers.
  adapter<T>& at(const std::string& path) { return find_or_throw(layers_, path); }
  /// \brief The adapter of layer `path`, read-only.
  /// \throws value_error as the mutable overload.
  const adapter<T>& at(const std::string& path) const { return find_or_throw(layers_, path); }

  /// \brief Iteration over (path, adapter) pairs in path order.
  typename layer_map::iterator begin() noexcept { return layers_.begin(); }
  /// \brief End of the iteration.
  typename layer_map::iterator end() noexcept { return layers_.end(); }
  /// \brief Read-only iteration over (path, adapter) pairs in path order.
  typename layer_map::const_iterator begin() const noexcept { return layers_.begin(); }
  /// \brief End of the read-only iteration.
  typename layer_map::const_iterator end() const noexcept { return layers_.end(); }

  /// \brief The (in, out) of every layer, and its layout where it differs from options()'s, so
  ///        that model_adapter(projection, shapes(), options()) lays the layers out as this one.
  layer_shapes shapes() const {
    layer_shapes out;
    for (const auto& [path, layer] : layers_) {
      layer_shape& shape = out[path];
      shape.in = layer.in_features();
      shape.out = layer.out_features();
      if (layer.options().fan_in_fan_out != options_.fan_in_fan_out)
        shape.fan_in_fan_out = layer.options().fan_in_fan_out;
    }
    return out;
  }

  /// \brief Trained scalars over all layers.
  index trainable_parameters() const {
    index total = 0;
    for (const auto& [path, layer] : layers_) total += layer.trainable_parameters();
    return total;
  }

 private:
  template <class Map>
  static auto& find_or_throw(Map& layers, const std::string& path) {
    const auto it = layers.find(path);
    if (it == layers.end()) throw value_error(missing_layer_message(layers, path));
    return it->second;
  }

  // A PEFT tensor key names the layer with a prefix and a suffix; module paths have neither.
  static std::string module_path_of(std::string path) {
    for (const char* prefix : {"base_model.model.", "base_model."}) {
      const std::string p = prefix;
      if (path.compare(0, p.size(), p) == 0 && path.size() > p.size()) {
        path.erase(0, p.size());
        break;
      }
    }
    for (const char* suffix : {".vera_lambda_b", ".vera_lambda_d", ".weight", ".bias", ".base_layer"}) {
      const std::string s = suffix;
      if (path.size() > s.size() && path.compare(path.size() - s.size(), s.size(), s) == 0)
        path.erase(path.size() - s.size());
    }
    return path;
  }

  static std::string missing_layer_message(const layer_map& layers, const std::string& path) {
    std::string message = "model_adapter: no adapted layer '" + path + "'";
    const std::string guess = module_path_of(path);
    if (guess != path && layers.count(guess) != 0) {
      return message + "; did you mean '" + guess +
             "'? Layers are named by module path, without PEFT's 'base_model.model.' key prefix "
             "or a tensor suffix";
    }
    if (layers.empty()) return message + " (the model adapts no layer)";
    message += "; the " + std::to_string(layers.size()) + " adapted layers include ";
    std::size_t shown = 0;
    for (const auto& [name, layer] : layers) {
      if (shown == 3) break;
      message += (shown++ == 0 ? "'" : ", '") + name + "'";
    }
    return message;
  }

  projection<T> projection_;
  adapter_options options_;
  layer_map layers_;
};

}  // namespace vera::io
