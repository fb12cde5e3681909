// SPDX-License-Identifier: Apache-2.0
// PEFT VeRA adapter directories: tensor keys, checked loading against config and shapes, saving.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "vera/adapter/adapter.hpp"
#include "vera/adapter/options.hpp"
#include "vera/adapter/projection.hpp"
#include "vera/core/error.hpp"
#include "vera/core/projection_spec.hpp"
#include "vera/io/config.hpp"
#include "vera/io/error.hpp"
#include "vera/io/file.hpp"
#include "vera/io/matrix.hpp"
#include "vera/io/model_adapter.hpp"
#include "vera/io/safetensors.hpp"

namespace vera::io {

/// \brief Name of the config file inside a PEFT adapter directory.
inline constexpr const char* adapter_config_file = "adapter_config.json";
/// \brief Name of the weights file inside a PEFT adapter directory.
inline constexpr const char* adapter_weights_file = "adapter_model.safetensors";

namespace detail {

/// \brief Prefix of every module key in a file saved by PEFT's save_pretrained (transformers'
///        own PEFT integration can save without it).
inline constexpr const char* peft_key_prefix = "base_model.model.";

/// \brief Key of the saved projection A (rank x max_in) in a PEFT VeRA file.
inline constexpr const char* peft_vera_a_key = "base_model.vera_A";

/// \brief Key of the saved projection B (max_out x rank).
inline constexpr const char* peft_vera_b_key = "base_model.vera_B";

/// \brief PEFT's key of layer `path`'s lambda_b (out elements).
inline std::string peft_lambda_b_key(const std::string& path) {
  return peft_key_prefix + path + ".vera_lambda_b";
}

/// \brief PEFT's key of layer `path`'s lambda_d (rank elements).
inline std::string peft_lambda_d_key(const std::string& path) {
  return peft_key_prefix + path + ".vera_lambda_d";
}

/// \brief PEFT LoRA key of layer `path`'s lora_A (r x in).
inline std::string peft_lora_a_key(const std::string& path) {
  return peft_key_prefix + path + ".lora_A.weight";
}

/// \brief PEFT LoRA key of layer `path`'s lora_B (out x r).
inline std::string peft_lora_b_key(const std::string& path) {
  return peft_key_prefix + path + ".lora_B.weight";
}

}  // namespace detail

/// \brief Why a PEFT adapter file holds a whole tensor of the base model.
enum class trained_kind {
  module_to_save,  ///< a tensor of a module listed in modules_to_save (e.g. the classifier)
  bias,            ///< a base-layer bias trained under bias = "vera_only" or "all"
  /// `<module>.original_module.*` or `<module>.modules_to_save.*`: the second copies inside a
  /// modules_to_save wrapper that PEFT also writes under bias = "all". Kept for a re-save, never
  /// applied: PEFT's merge keeps only the `<module>.*` copy.
  wrapper_copy,
};

namespace detail {

// "modules_to_save", "bias" or "modules_to_save wrapper copy", as messages print a kind.
inline const char* trained_kind_name(trained_kind kind) {
  return enum_name(kind, {"modules_to_save", "bias", "modules_to_save wrapper copy"});
}

}  // namespace detail

/// \brief A base-model tensor that a PEFT adapter file holds in full (a modules_to_save copy or a
///        trained bias), kept exactly as stored: dtype, shape and bytes.
struct trained_tensor {
  std::string key;  ///< the file's key without PEFT's prefix, e.g. "classifier.weight"
  /// The base-model tensor it replaces in a merge (e.g. "classifier.weight", or "q.bias" for
  /// "q.base_layer.bias"); empty for a wrapper copy, which replaces nothing.
  std::string target;
  trained_kind kind = trained_kind::module_to_save;  ///< why the file holds it
  dtype type = dtype::f32;  ///< element type as stored
  std::vector<std::uint64_t> shape;  ///< extents, row-major
  std::vector<unsigned char> bytes;  ///< the little-endian elements, as in the file

  /// \brief Bytes that dtype and shape call for (bytes.size() must equal it).
  std::uint64_t expected_bytes() const {
    std::uint64_t size = detail::dtype_size(type);
    for (const auto extent : shape) size *= extent;
    return size;
  }

  /// \brief The elements converted to T (float or double), row-major.
  /// \throws format_error when the dtype does not convert to floating point or the byte count
  ///         does not match dtype and shape.
  template <class T>
  std::vector<T> values() const {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                  "trained_tensor::values<T>: T must be float or double");
    if (!detail::is_convertible(type)) {
      throw format_error("trained tensor '" + key + "' has dtype " + dtype_name(type) +
                         "; only F16, BF16, F32 and F64 convert to floating point");
    }
    if (bytes.size() != expected_bytes()) {
      throw format_error("trained tensor '" + key + "' holds " + std::to_string(bytes.size()) +
                         " bytes, but dtype and shape need " + std::to_string(expected_bytes()));
    }
    std::vector<T> out(bytes.size() / detail::dtype_size(type));
    detail::decode(type, bytes.data(), out.size(), out.data());
    return out;
  }
};

/// \brief Which projection a load uses when the file holds A and B.
enum class projection_source {
  saved,        ///< the file's matrices, as current PEFT does
  regenerated,  ///< regenerate from projection_prng_key and only report the difference
};

/// \brief How load_peft_adapter treats a directory.
struct load_options {
  /// Which projection to use when the file holds A and B.
  projection_source source = projection_source::saved;
  /// Which torch kernel to reproduce when regenerating (fused: every AVX2/AVX-512 machine).
  peft_rounding rounding = peft_rounding::fused;
  /// Ignore, and list in the report, tensors that are neither VeRA's nor explained by the config
  /// (a modules_to_save copy, a bias trained under `bias`), instead of failing.
  bool allow_extra_tensors = false;
};

/// \brief Element-wise comparison of a saved matrix with the regenerated one.
struct matrix_difference {
  index elements = 0;  ///< elements compared
  index differing = 0;   ///< elements whose values are not identical
  double max_abs = 0.0;  ///< largest |saved - regenerated|
};

/// \brief What load_peft_adapter found besides the adapter itself.
struct load_report {
  bool projection_in_file = false;     ///< the file holds base_model.vera_A and vera_B
  bool used_saved_projection = false;  ///< the loaded adapter uses them (else: regenerated)
  matrix_difference a_difference;      ///< saved A vs regenerated A (when in the file)
  matrix_difference b_difference;      ///< saved B vs regenerated B (when in the file)
  std::vector<std::string> ignored_tensors;  ///< tensors skipped under allow_extra_tensors
  /// false when the module keys lack PEFT's "base_model.model." prefix (as transformers' own
  /// PEFT integration can save them).
  bool prefixed_keys = true;
  std::vector<std::string> warnings;  ///< findings that do not stop the load, one sentence each

  /// \brief True when there was nothing to compare or the saved pair equals the regenerated one.
  bool projection_matches_seed() const noexcept {
    return a_difference.differing == 0 && b_difference.differing == 0;
  }
};

/// \brief A loaded PEFT VeRA adapter: its config, the model-level adapter, and the load report.
template <class T>
struct peft_adapter {
  vera_config config;  ///< the adapter_config.json read
  model_adapter<T> model;  ///< the adapters, on the projection the load chose
  load_report report;  ///< what the load found besides the adapter
  /// modules_to_save copies and trained biases, sorted by key: a merge puts them in place of the
  /// base model's tensors, a save and a LoRA export write them back unchanged.
  std::vector<trained_tensor> trained;

  /// \brief The trained tensor that replaces base tensor `target` in a merge, or null.
  const trained_tensor* find_trained(const std::string& target) const {
    for (const auto& t : trained) {
      if (!t.target.empty() && t.target == target) return &t;
    }
    return nullptr;
  }
};

/// \brief How save_peft_adapter writes.
struct save_options {
  /// false (default): seed only, PEFT regenerates A and B from projection_prng_key; the file is
  /// about 10x smaller. true: also write base_model.vera_A / vera_B.
  bool save_projection = false;
  dtype stored = dtype::f32;  ///< dtype of every written tensor (F16, BF16, F32 or F64)
};

namespace detail {

inline bool starts_with(const std::string& text, const std::string& prefix) {
  return text.size() >= prefix.size() && text.compare(0, prefix.size(), prefix) == 0;
}
inline bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() &&
         text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// `text` without `suffix`, or empty when it does not end with it (or is nothing but it).
inline std::string strip_suffix(const std::string& text, const std::string& suffix) {
  if (text.size() <= suffix.size() || !ends_with(text, suffix)) return {};
  return text.substr(0, text.size() - suffix.size());
}

// "'a', 'b', 'c'" and ", ... (N in all)" beyond `shown` names.
inline std::string quoted_list(const std::vector<std::string>& names, std::size_t shown = 3) {
  std::string text;
  for (std::size_t i = 0; i < names.size() && i < shown; ++i)
    text += (i == 0 ? "'" : ", '") + names[i] + "'";
  if (names.size() > shown) text += ", ... (" + std::to_string(names.size()) + " in all)";
  return text;
}

// The format_error for adapted layers whose weight `base` lacks: "<source>: <no_tensor>
// '<first>.weight' for adapted layer '<first>'", how many more, then `hint`.
inline format_error missing_weights(const safetensors_view& base, std::vector<std::string> missing,
                                    const char* no_tensor, const char* hint = "") {
  std::string message = base.source() + ": " + no_tensor + " '" + missing.front() +
                        ".weight' for adapted layer '" + missing.front() + "'";
  if (missing.size() > 1) {
    missing.erase(missing.begin());
    message += " (and " + std::to_string(missing.size()) + " more adapted layers without a weight: " +
               quoted_list(missing) + ")" + hint;
  }
  return format_error(message);
}

struct layer_tensors {
  const tensor_info* lambda_b = nullptr;
  const tensor_info* lambda_d = nullptr;
};

// A tensor that is neither a lambda nor the projection, with its key without the prefix.
struct other_tensor {
  const tensor_info* info = nullptr;
  std::string key;
};

struct trained_entry {
  const tensor_info* info = nullptr;
  std::string key;
  std::string target;
  trained_kind kind = trained_kind::module_to_save;
};

struct adapter_tensors {
  std::string prefix;  // peft_key_prefix, or empty for a file saved without it
  std::map<std::string, layer_tensors> layers;
  const tensor_info* a = nullptr;
  const tensor_info* b = nullptr;
  std::vector<other_tensor> others;  // neither lambdas nor projection
  std::vector<trained_entry> trained;  // the others that the config explains
  std::vector<other_tensor> extra;  // the others that it does not
};

// Sorts a file's tensors into lambdas, projection and the rest. A file is prefixed when any key
// starts with "base_model.model."; then keys without it are not the adapter's.
inline adapter_tensors split_tensors(const safetensors_view& file) {
  adapter_tensors out;
  for (const auto& t : file.tensors()) {
    if (starts_with(t.name, peft_key_prefix)) {
      out.prefix = peft_key_prefix;
      break;
    }
  }
  const bool prefixed = !out.prefix.empty();
  for (const auto& t : file.tensors()) {
    if (t.name == peft_vera_a_key || (!prefixed && t.name == "vera_A")) {
      out.a = &t;
    } else if (t.name == peft_vera_b_key || (!prefixed && t.name == "vera_B")) {
      out.b = &t;
    } else if (prefixed && !starts_with(t.name, out.prefix)) {
      out.others.push_back({&t, std::string()});
    } else {
      std::string key = t.name.substr(out.prefix.size());
      if (const auto path = strip_suffix(key, ".vera_lambda_b"); !path.empty()) {
        out.layers[path].lambda_b = &t;
      } else if (const auto path_d = strip_suffix(key, ".vera_lambda_d"); !path_d.empty()) {
        out.layers[path_d].lambda_d = &t;
      } else {
        out.others.push_back({&t, std::move(key)});
      }
    }
  }
  return out;
}

// Where the module of `key` ends (the dot after it) when a dot-separated prefix of `key` ends
// with a name in modules_to_save, as PEFT matches them (str.endswith); the shortest such
// prefix, i.e. the outermost module; npos when none.
inline std::size_t module_to_save_end(const std::string& key, const vera_config& config) {
  if (!config.modules_to_save) return std::string::npos;
  for (auto dot = key.find('.'); dot != std::string::npos; dot = key.find('.', dot + 1)) {
    const std::string module = key.substr(0, dot);
    for (const auto& name : *config.modules_to_save) {
      if (!name.empty() && ends_with(module, name)) return dot;
    }
  }
  return std::string::npos;
}

// Explains the others by the config: modules_to_save copies first (PEFT's wrapper owns every
// tensor of the module, its biases included), then biases trained under `bias`.
inline void classify_trained(adapter_tensors& found, const vera_config& config) {
  for (const auto& other : found.others) {
    const std::string& key = other.key;
    if (key.empty()) {
      found.extra.push_back(other);
      continue;
    }
    if (const auto end = module_to_save_end(key, config); end != std::string::npos) {
      const std::string inside = key.substr(end + 1);
      const bool copy = starts_with(inside, "original_module.") || starts_with(inside, "modules_to_save.");
      found.trained.push_back({other.info, key, copy ? std::string() : key,
                               copy ? trained_kind::wrapper_copy : trained_kind::module_to_save});
      continue;
    }
    const bool is_bias = key == "bias" || ends_with(key, ".bias");
    if (is_bias && config.bias != bias_mode::none) {
      // PEFT saves an adapted layer's bias from its wrapper: "<layer>.base_layer.bias".
      const auto layer = strip_suffix(key, ".base_layer.bias");
      const bool of_adapted = !layer.empty() && found.layers.count(layer) != 0;
      if (of_adapted || config.bias == bias_mode::all) {
        found.trained.push_back({other.info, key, of_adapted ? layer + ".bias" : key,
                                 trained_kind::bias});
        continue;
      }
    }
    found.extra.push_back(other);
  }
}

// Why the first unexplained tensor is refused, naming the config field that could explain it.
inline std::string extra_tensor_message(const safetensors_view& file, const vera_config& config,
                                        const adapter_tensors& found) {
  const other_tensor& first = found.extra.front();
  std::string message =
      file.source() + ": tensor '" + first.info->name + "' is not part of a VeRA adapter";
  if (found.extra.size() > 1) message += " (and " + std::to_string(found.extra.size() - 1) + " more)";
  const bool is_bias = first.key == "bias" || ends_with(first.key, ".bias");
  if (first.key.empty()) {
    message += ": the other keys start with '" + found.prefix + "' and this one does not";
  } else {
    if (!config.modules_to_save || config.modules_to_save->empty()) {
      message += ": adapter_config.json lists no modules_to_save";
    } else {
      message += ": no module in adapter_config.json's modules_to_save (" +
                 quoted_list(*config.modules_to_save) + ") matches it";
    }
    if (is_bias && config.bias == bias_mode::none) {
      message += ", and its bias = \"none\" trains no bias";
    } else if (is_bias && config.bias == bias_mode::vera_only) {
      message += ", and its bias = \"vera_only\" trains only the adapted layers' biases "
                 "('<layer>.base_layer.bias')";
    }
  }
  return message + "; load_options::allow_extra_tensors ignores such tensors";
}

[[noreturn]] inline void mismatch(const safetensors_view& file, const std::string& message) {
  throw format_error(file.source() + ": " + message);
}

inline void expect_shape(const safetensors_view& file, const tensor_info& t,
                         std::vector<std::uint64_t> expected, const std::string& why) {
  if (!detail::is_convertible(t.type)) {
    mismatch(file, "tensor '" + t.name + "' has dtype " + dtype_name(t.type) +
                       ", expected F16, BF16, F32 or F64");
  }
  if (t.shape != expected) {
    mismatch(file, "tensor '" + t.name + "' has shape " + shape_string(t.shape) + ", expected " +
                       shape_string(expected) + " (" + why + ")");
  }
}

template <class T>
std::vector<T> finite_values(const safetensors_view& file, const tensor_info& t) {
  auto values = file.values<T>(t);
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(static_cast<double>(values[i]))) {
      mismatch(file, "tensor '" + t.name + "' element " + std::to_string(i) + " is " +
                         (std::isnan(static_cast<double>(values[i])) ? "NaN" : "infinite"));
    }
  }
  return values;
}

template <class Saved, class Regenerated>
matrix_difference compare(const Saved& saved, const Regenerated& regenerated) {
  matrix_difference diff;
  diff.elements = saved.size();
  for (index i = 0; i < saved.rows(); ++i) {
    for (index j = 0; j < saved.cols(); ++j) {
      const double delta =
          std::fabs(static_cast<double>(saved(i, j)) - static_cast<double>(regenerated(i, j)));
      if (static_cast<double>(saved(i, j)) != static_cast<double>(regenerated(i, j)))
        ++diff.differing;
      diff.max_abs = std::max(diff.max_abs, delta);
    }
  }
  return diff;
}

}  // namespace detail

/// \brief Module paths of the layers that have VeRA vectors in an adapter file, sorted (keys
///        with or without PEFT's "base_model.model." prefix).
inline std::vector<std::string> peft_layer_paths(const safetensors_view& file) {
  std::vector<std::string> paths;
  for (const auto& [path, tensors] : detail::split_tensors(file).layers) paths.push_back(path);
  return paths;
}

/// \brief (in, out) of each layer in `paths` from a base model's `<path>.weight` tensors.
///
/// The weight is out x in (nn.Linear) or in x out when `fan_in_fan_out` (GPT-2 Conv1D), the same
/// for every layer; adapted_layer_shapes reads each layer's layout for a model that mixes them.
/// Throws
/// format_error when a weight is missing (naming the first and how many more are missing), not
/// 2-D or empty.
inline layer_shapes layer_shapes_from_weights(const safetensors_view& base,
                                              const std::vector<std::string>& paths,
                                              bool fan_in_fan_out) {
  std::vector<std::string> missing;
  for (const auto& path : paths) {
    if (base.find(path + ".weight") == nullptr) missing.push_back(path);
  }
  if (!missing.empty()) {
    throw detail::missing_weights(base, std::move(missing), "no tensor", "; is this the adapter's base model?");
  }
  layer_shapes shapes;
  for (const auto& path : paths) {
    const std::string key = path + ".weight";
    const tensor_info* weight = base.find(key);
    // Every byte of a tensor is in the file, so only an empty weight can claim absurd extents.
    if (weight->shape.size() != 2 || weight->shape[0] == 0 || weight->shape[1] == 0) {
      throw format_error(base.source() + ": tensor '" + key + "' has shape " +
                         shape_string(weight->shape) + ", expected a non-empty 2-D weight");
    }
    const auto rows = static_cast<index>(weight->shape[0]);
    const auto cols = static_cast<index>(weight->shape[1]);
    shapes[path] = fan_in_fan_out ? layer_shape{rows, cols} : layer_shape{cols, rows};
  }
  return shapes;
}

/// \brief Base weight layouts the caller gives by module path: true for in x out (transformers'
///        Conv1D), false for out x in (nn.Linear). adapted_layer_shapes needs one for a square
///        weight in a model that mixes both kinds; for any other it must agree with the weight.
using layer_layouts = std::map<std::string, bool>;

namespace detail {

// A base weight's extents as stored and the file that holds it.
struct stored_weight {
  std::uint64_t rows = 0;
  std::uint64_t cols = 0;
  std::string source;
};

inline const char* layout_name(bool fan_in_fan_out) {
  return fan_in_fan_out ? "in x out (Conv1D)" : "out x in (nn.Linear)";
}

// Each adapted layer's (in, out) and layout. A non-square weight shows its layout: its extent
// equal to the adapter's out_features (the length of lambda_b) comes first for nn.Linear, second
// for Conv1D. A square one follows the other layers and the config when they all agree; when
// they do not, the model mixes both kinds and only `given` can say.
inline layer_shapes resolve_layouts(const std::map<std::string, stored_weight>& weights,
                                    const safetensors_view& adapter, const vera_config& config,
                                    const layer_layouts& given) {
  for (const auto& [path, layout] : given) {
    if (weights.count(path) == 0) {
      throw value_error("a layout is given for layer '" + path + "', which " + adapter.source() +
                        " does not adapt");
    }
  }
  const auto found = split_tensors(adapter);
  std::string linear_example, conv1d_example;  // a non-square layer of each kind, if any
  std::vector<std::string> square;
  layer_shapes shapes;
  for (const auto& [path, weight] : weights) {
    const auto rows = static_cast<index>(weight.rows);
    const auto cols = static_cast<index>(weight.cols);
    const auto given_layout = given.find(path);
    const auto tensors = found.layers.find(path);
    const tensor_info* lambda_b = tensors == found.layers.end() ? nullptr : tensors->second.lambda_b;
    if (lambda_b == nullptr || lambda_b->shape.size() != 1) {
      // load_peft_adapter names what is wrong with the vectors.
      const bool layout = given_layout != given.end() ? given_layout->second : config.fan_in_fan_out;
      shapes[path] = {layout ? rows : cols, layout ? cols : rows, layout};
      continue;
    }
    const auto out = static_cast<index>(lambda_b->shape[0]);
    const std::string weight_text =
        "'" + path + ".weight' [" + std::to_string(rows) + ", " + std::to_string(cols) + "] in " +
        weight.source;
    if (rows != out && cols != out) {
      throw format_error(adapter.source() + ": tensor '" + lambda_b->name + "' has " +
                         std::to_string(out) + " elements (out_features), but neither extent of " +
                         "the base weight " + weight_text + " is " + std::to_string(out) +
                         "; is this the adapter's base model?");
    }
    if (rows == cols) {
      square.push_back(path);
      continue;
    }
    const bool layout = cols == out;
    if (given_layout != given.end() && given_layout->second != layout) {
      throw value_error("layer '" + path + "' is given the layout " + layout_name(!layout) +
                        ", but its weight " + weight_text + " with out_features " +
                        std::to_string(out) + " is stored " + layout_name(layout));
    }
    (layout ? conv1d_example : linear_example) = path;
    shapes[path] = {layout ? rows : cols, layout ? cols : rows, layout};
  }
  for (const auto& path : square) {
    const stored_weight& weight = weights.at(path);
    const auto extent = static_cast<index>(weight.rows);
    if (const auto given_layout = given.find(path); given_layout != given.end()) {
      shapes[path] = {extent, extent, given_layout->second};
      continue;
    }
    const bool mixed = !linear_example.empty() && !conv1d_example.empty();
    const bool against_config = (!linear_example.empty() && config.fan_in_fan_out) ||
                                (!conv1d_example.empty() && !config.fan_in_fan_out);
    if (mixed || against_config) {
      std::string why;
      if (mixed) {
        why = "'" + conv1d_example + "' is stored " + layout_name(true) + " and '" + linear_example +
              "' " + layout_name(false);
      } else {
        const std::string& other = linear_example.empty() ? conv1d_example : linear_example;
        why = "'" + other + "' is stored " + layout_name(linear_example.empty()) +
              " but adapter_config.json's fan_in_fan_out is " +
              (config.fan_in_fan_out ? "true" : "false") +
              ", the value PEFT saves from the last module it adapted";
      }
      throw format_error(weight.source + ": layer '" + path + "' (adapted in " + adapter.source() +
                         ") has a square weight '" + path + ".weight' [" + std::to_string(extent) +
                         ", " + std::to_string(extent) +
                         "], whose layout its shape does not tell, and the model mixes Conv1D and "
                         "nn.Linear layers: " + why +
                         "; give its layout (layer_layouts; vera: --conv1d " + path + " or --linear " +
                         path + ")");
    }
    shapes[path] = {extent, extent, !conv1d_example.empty() || config.fan_in_fan_out};
  }
  return shapes;
}

}  // namespace detail

/// \brief (in, out) and layout of each layer adapted in `adapter` (a PEFT adapter file) from the
///        base model's `<path>.weight` tensors, for a model that may mix nn.Linear and Conv1D.
///
/// PEFT decides fan_in_fan_out per module from its type and saves the value it set last, so
/// `config.fan_in_fan_out` can be wrong for some layers. A non-square weight shows its layout
/// (out x in when its first extent is the adapter's out_features, the length of lambda_b; in x
/// out otherwise); a square one takes the layout of the non-square ones and the config when they
/// agree, else `given`'s (module path -> fan_in_fan_out). Throws format_error as
/// layer_shapes_from_weights does, for a weight of which neither extent is out_features, and for
/// a square weight whose layout nothing settles (naming the layer and both files); value_error
/// when `given` names a layer the adapter does not adapt or contradicts a weight's shape.
inline layer_shapes adapted_layer_shapes(const safetensors_view& base,
                                         const safetensors_view& adapter,
                                         const vera_config& config, const layer_layouts& given = {}) {
  std::map<std::string, detail::stored_weight> weights;
  // Checked and read as out x in: in = columns, out = rows.
  for (const auto& [path, shape] : layer_shapes_from_weights(base, peft_layer_paths(adapter), false)) {
    weights[path] = {static_cast<std::uint64_t>(shape.out), static_cast<std::uint64_t>(shape.in),
                     base.source()};
  }
  return detail::resolve_layouts(weights, adapter, config, given);
}

namespace detail {

// "r = 8 in adapter_config.json", or PEFT's default when the field is absent.
inline std::string rank_origin(const vera_config& config) {
  if ((config.json.is_object() && config.json.contains("r")) || config.r != 256)
    return "r = " + std::to_string(config.r) + " in adapter_config.json";
  return "r = " + std::to_string(config.r) + ", PEFT's default: adapter_config.json has no 'r'";
}

// (max_in, max_out) of the saved vera_A (r x max_in) and vera_B (max_out x r) after checking
// them: r rows / columns, and at least the extents the adapted layers need.
inline layer_shape projection_extents(const safetensors_view& file, const tensor_info& a,
                                      const tensor_info& b, const vera_config& config,
                                      const layer_shape& needed) {
  const auto rank = static_cast<std::uint64_t>(config.r);
  const auto in = static_cast<std::uint64_t>(needed.in);
  const auto out = static_cast<std::uint64_t>(needed.out);
  const bool a_fits = a.shape.size() == 2 && a.shape[0] == rank && a.shape[1] >= in;
  const bool b_fits = b.shape.size() == 2 && b.shape[1] == rank && b.shape[0] >= out;
  const std::string wider =
      ", or larger: PEFT saves one pair per model, sized for its first adapter's layers";
  expect_shape(file, a, a_fits ? a.shape : std::vector<std::uint64_t>{rank, in},
               rank_origin(config) + " x the largest in_features of the adapted layers" + wider);
  expect_shape(file, b, b_fits ? b.shape : std::vector<std::uint64_t>{out, rank},
               "the largest out_features of the adapted layers x " + rank_origin(config) + wider);
  return {static_cast<index>(a.shape[1]), static_cast<index>(b.shape[0])};
}

// The trained tensors a load keeps: dtype and values checked, bytes copied, sorted by key.
inline std::vector<trained_tensor> keep_trained(const safetensors_view& file,
                                                const adapter_tensors& found) {
  std::map<std::string, std::string> by_target;
  std::vector<trained_tensor> kept;
  for (const auto& entry : found.trained) {
    const tensor_info& t = *entry.info;
    if (!entry.target.empty()) {
      const auto [it, fresh] = by_target.emplace(entry.target, t.name);
      if (!fresh) {
        mismatch(file, "tensors '" + it->second + "' and '" + t.name +
                           "' both replace the base model's '" + entry.target + "'");
      }
      if (const auto layer = strip_suffix(entry.target, ".weight");
          !layer.empty() && found.layers.count(layer) != 0) {
        mismatch(file, "tensor '" + t.name + "' (" + detail::trained_kind_name(entry.kind) +
                           ") would replace '" + entry.target + "', the weight VeRA adapts");
      }
    }
    if (entry.kind == trained_kind::bias && !detail::is_convertible(t.type)) {
      mismatch(file, "tensor '" + t.name + "' (a trained bias) has dtype " + dtype_name(t.type) +
                         ", expected F16, BF16, F32 or F64");
    }
    if (entry.kind != trained_kind::wrapper_copy && detail::is_convertible(t.type)) {
      finite_values<double>(file, t);
    }
    trained_tensor out;
    out.key = entry.key;
    out.target = entry.target;
    out.kind = entry.kind;
    out.type = t.type;
    out.shape = t.shape;
    out.bytes.assign(file.bytes(t), file.bytes(t) + t.byte_size());
    kept.push_back(std::move(out));
  }
  std::sort(kept.begin(), kept.end(),
            [](const trained_tensor& a, const trained_tensor& b) { return a.key < b.key; });
  return kept;
}

}  // namespace detail

/// \brief Builds the adapter described by `config` and the tensors of `file`.
///
/// `base` gives (in, out) of the base model's layers, and a layer's own layout where it has one
/// (adapted_layer_shapes sets it; otherwise `config.fan_in_fan_out` applies); it may list more
/// layers than the adapter adapts. The projection is sized from the element-wise maximum over the adapted layers, as
/// PEFT sizes it. A seed-only file regenerates A and B from projection_prng_key; a file with A
/// and B is compared with the regenerated pair (see load_report) and, by default, its pair is
/// used. Tensors of modules in `config.modules_to_save` and biases trained under `config.bias`
/// are kept as stored in peft_adapter::trained. Keys may lack PEFT's "base_model.model." prefix
/// (load_report::prefixed_keys). Every mismatch (missing or unexplained tensors, rank, shapes,
/// dtypes, non-finite values, save_projection = true without A and B in the file) throws
/// format_error naming the file and the tensor or field; A and B in the file with
/// save_projection = false only adds a warning to the report.
template <class T>
peft_adapter<T> load_peft_adapter(const vera_config& config, const safetensors_view& file,
                                  const layer_shapes& base, const load_options& options = {}) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "load_peft_adapter<T>: T is float or double");
  auto found = detail::split_tensors(file);
  detail::classify_trained(found, config);
  load_report report;
  report.prefixed_keys = !found.prefix.empty();
  if (!found.extra.empty()) {
    if (!options.allow_extra_tensors)
      throw format_error(detail::extra_tensor_message(file, config, found));
    for (const auto& other : found.extra) report.ignored_tensors.push_back(other.info->name);
  }
  if (found.layers.empty()) {
    detail::mismatch(file,
                     "holds no VeRA layer (no tensor named [base_model.model.]<path>.vera_lambda_b)");
  }

  const auto rank = static_cast<std::uint64_t>(config.r);
  layer_shapes adapted;
  std::vector<std::string> unknown;
  for (const auto& [path, tensors] : found.layers) {
    if (tensors.lambda_b == nullptr)
      detail::mismatch(file, "layer '" + path + "' has no '" + found.prefix + path + ".vera_lambda_b'");
    if (tensors.lambda_d == nullptr)
      detail::mismatch(file, "layer '" + path + "' has no '" + found.prefix + path + ".vera_lambda_d'");
    if (base.count(path) == 0) unknown.push_back(path);
  }
  if (!unknown.empty()) {
    std::string message =
        "layer '" + unknown.front() + "' is adapted here but the base layer shapes have no such layer";
    if (unknown.size() > 1) {
      unknown.erase(unknown.begin());
      message += " (and " + std::to_string(unknown.size()) + " more: " + detail::quoted_list(unknown) + ")";
    }
    detail::mismatch(file, message);
  }
  for (const auto& [path, tensors] : found.layers) {
    const layer_shape& shape = base.at(path);
    std::string why = "out_features of layer '" + path + "'";
    if (shape.in != shape.out && tensors.lambda_b->shape.size() == 1 &&
        tensors.lambda_b->shape[0] == static_cast<std::uint64_t>(shape.in)) {
      why += "; its length is the layer's in_features, as when the base weight is stored the other "
             "way (nn.Linear vs Conv1D): adapted_layer_shapes reads each layer's layout";
    }
    detail::expect_shape(file, *tensors.lambda_b, {static_cast<std::uint64_t>(shape.out)}, why);
    detail::expect_shape(file, *tensors.lambda_d, {rank}, detail::rank_origin(config));
    adapted[path] = shape;
  }
  auto trained = detail::keep_trained(file, found);

  if ((found.a == nullptr) != (found.b == nullptr)) {
    detail::mismatch(
        file, std::string("holds '") + (found.a != nullptr ? detail::peft_vera_a_key : detail::peft_vera_b_key) +
                  "' but not '" + (found.a != nullptr ? detail::peft_vera_b_key : detail::peft_vera_a_key) + "'");
  }
  report.projection_in_file = found.a != nullptr;
  if (config.save_projection && !report.projection_in_file) {
    detail::mismatch(file,
                     "adapter_config.json says save_projection = true but the file holds no '" +
                         std::string(detail::peft_vera_a_key) + "' / '" + detail::peft_vera_b_key + "'");
  }
  // PEFT sizes the pair once per model, from the first adapter's layers; every later adapter
  // saves that pair, so a file may hold a pair larger than its own layers need (they slice it).
  const layer_shape largest = max_extents(adapted);
  layer_shape in_file = largest;
  if (report.projection_in_file) {
    in_file = detail::projection_extents(file, *found.a, *found.b, config, largest);
  }
  const bool saved_pair = report.projection_in_file && config.save_projection;
  const layer_shape extents = saved_pair ? in_file : largest;
  const projection_spec spec{config.projection_prng_key,
                             config.r,
                             extents.in,
                             extents.out,
                             generator::peft,
                             options.rounding};
  const projection<T> regenerated(spec);
  projection<T> shared = regenerated;

  if (report.projection_in_file) {
    projection_spec file_spec = spec;
    file_spec.max_in = in_file.in;
    file_spec.max_out = in_file.out;
    const projection<T> regenerated_as_saved = saved_pair ? regenerated : projection<T>(file_spec);
    auto a_values = detail::finite_values<T>(file, *found.a);
    auto b_values = detail::finite_values<T>(file, *found.b);
    row_matrix<T> a = Eigen::Map<const row_matrix<T>>(a_values.data(), file_spec.rank, file_spec.max_in);
    row_matrix<T> b = Eigen::Map<const row_matrix<T>>(b_values.data(), file_spec.max_out, file_spec.rank);
    report.a_difference = detail::compare(a, regenerated_as_saved.a());
    report.b_difference = detail::compare(b, regenerated_as_saved.b());
    if (!config.save_projection) {
      report.warnings.push_back(
          "the file holds vera_A/vera_B but save_projection is false: PEFT ignores them "
          "and regenerates the projection from projection_prng_key, and so does vera");
    } else if (options.source == projection_source::saved) {
      shared = projection<T>(spec, std::move(a), std::move(b));
      report.used_saved_projection = true;
    }
    if (!report.projection_matches_seed()) {
      report.warnings.push_back(
          "the saved projection differs from the one regenerated from projection_prng_key " +
          std::to_string(config.projection_prng_key) + " in " +
          std::to_string(report.a_difference.differing + report.b_difference.differing) + " of " +
          std::to_string(report.a_difference.elements + report.b_difference.elements) +
          " elements (max |diff| " +
          std::to_string(std::max(report.a_difference.max_abs, report.b_difference.max_abs)) + ")");
    }
  }

  adapter_options layer_options;
  layer_options.rank = config.r;
  layer_options.d_initial = config.d_initial;
  layer_options.dropout = config.vera_dropout;
  layer_options.fan_in_fan_out = config.fan_in_fan_out;
  model_adapter<T> model(std::move(shared), adapted, layer_options);
  for (const auto& [path, tensors] : found.layers) {
    const auto b = detail::finite_values<T>(file, *tensors.lambda_b);
    const auto d = detail::finite_values<T>(file, *tensors.lambda_d);
    model.at(path).set_lambdas(Eigen::Map<const vector<T>>(b.data(), static_cast<index>(b.size())),
                               Eigen::Map<const vector<T>>(d.data(), static_cast<index>(d.size())));
  }
  return peft_adapter<T>{config, std::move(model), std::move(report), std::move(trained)};
}

/// \brief Loads the PEFT VeRA adapter in directory `dir` (adapter_config.json and
///        adapter_model.safetensors); see the overload above for what is checked.
/// \throws io_error when a file cannot be read; format_error for a malformed or mismatching
///         file, or a directory that holds only adapter_model.bin.
template <class T>
peft_adapter<T> load_peft_adapter(const std::filesystem::path& dir, const layer_shapes& base,
                                  const load_options& options = {}) {
  const auto config = vera_config::read(dir / adapter_config_file);
  const auto weights = dir / adapter_weights_file;
  if (!std::filesystem::exists(weights) && std::filesystem::exists(dir / "adapter_model.bin")) {
    throw format_error(detail::quoted(dir) +
                       " holds adapter_model.bin (a pickle); only safetensors adapters "
                       "are read: re-save it with PEFT's safe_serialization=True");
  }
  const safetensors_file file(weights);
  return load_peft_adapter<T>(config, file, base, options);
}

namespace detail {

// Refuses a later adapter whose config field differs from the first's where PEFT requires one
// value per model.
inline std::string field_text(bool value) { return value ? "true" : "false"; }
template <class V>
std::string field_text(const V& value) {
  return std::to_string(value);
}

template <class V>
void expect_same_field(const std::filesystem::path& first, const std::filesystem::path& later,
                       const char* field, const V& first_value, const V& later_value,
                       const std::string& why) {
  if (first_value == later_value) return;
  throw format_error(quoted(later / adapter_config_file) + ": field '" + field + "' is " +
                     field_text(later_value) + " but " + field_text(first_value) +
                     " in the first adapter's " + quoted(first / adapter_config_file) + "; " + why);
}

}  // namespace detail

/// \brief Loads the adapters in `dirs` as PEFT holds them on one model (from_pretrained with the
///        first, load_adapter with the others): every adapter shares the first one's projection,
///        sized for the first one's layers, and slices it.
///
/// Each directory is checked as load_peft_adapter checks it, and against the first as PEFT does:
/// `projection_prng_key`, `save_projection` and `r` must be the first's (PEFT refuses another
/// key, mixed save_projection, and a larger r; a smaller r fails in its forward, since it does
/// not slice A's rows), every layer must fit the shared projection (PEFT refuses larger layers
/// in a later adapter), and a saved pair must have the shared pair's shape (PEFT's load of the
/// state dict refuses another). A later adapter with its pair saved keeps it, as PEFT loads it.
/// \throws value_error when `dirs` is empty; format_error naming the file and the field or
///         tensor; what load_peft_adapter throws.
template <class T>
std::vector<peft_adapter<T>> load_peft_adapters(const std::vector<std::filesystem::path>& dirs,
                                                const layer_shapes& base,
                                                const load_options& options = {}) {
  if (dirs.empty()) throw value_error("load_peft_adapters: no adapter directory given");
  std::vector<peft_adapter<T>> adapters;
  adapters.push_back(load_peft_adapter<T>(dirs.front(), base, options));
  const peft_adapter<T>& first = adapters.front();
  const projection<T>& shared = first.model.shared_projection();
  for (std::size_t k = 1; k < dirs.size(); ++k) {
    const auto& dir = dirs[k];
    const auto config = vera_config::read(dir / adapter_config_file);
    detail::expect_same_field(dirs.front(), dir, "projection_prng_key",
                              first.config.projection_prng_key, config.projection_prng_key,
                              "PEFT requires one key for all VeRA adapters of a model");
    detail::expect_same_field(dirs.front(), dir, "save_projection",
                              first.config.save_projection, config.save_projection,
                              "PEFT requires the projection saved for all adapters or none");
    detail::expect_same_field(dirs.front(), dir, "r", first.config.r, config.r,
                              "PEFT shares the first adapter's projection: it refuses a larger r, "
                              "and a smaller one fails in the forward");
    auto loaded = load_peft_adapter<T>(dir, base, options);
    const auto weights = detail::quoted(dir / adapter_weights_file);
    const auto& own = loaded.model.shared_projection();
    if (loaded.report.used_saved_projection) {
      if (own.max_in() != shared.max_in() || own.max_out() != shared.max_out()) {
        throw format_error(weights + ": tensor '" + detail::peft_vera_a_key + "' is [" +
                           std::to_string(own.rank()) + ", " + std::to_string(own.max_in()) +
                           "] and '" + detail::peft_vera_b_key + "' [" + std::to_string(own.max_out()) +
                           ", " + std::to_string(own.rank()) + "], but the first adapter's pair is [" +
                           std::to_string(shared.rank()) + ", " + std::to_string(shared.max_in()) +
                           "] / [" + std::to_string(shared.max_out()) + ", " +
                           std::to_string(shared.rank()) + "]; PEFT cannot load it onto that model");
      }
    } else {
      // Seed only: PEFT gives it the first adapter's pair.
      std::unique_ptr<model_adapter<T>> on_shared;
      try {
        on_shared = std::make_unique<model_adapter<T>>(shared, loaded.model.shapes(), loaded.model.options());
      } catch (const shape_error& e) {
        throw format_error(weights + ": " + e.what() + " (the projection of the first adapter, " +
                           detail::quoted(dirs.front()) +
                           "); PEFT refuses a later adapter whose layers are larger");
      }
      for (auto& [path, layer] : *on_shared) {
        layer.set_lambdas(loaded.model.at(path).lambda_b(), loaded.model.at(path).lambda_d());
      }
      loaded.model = std::move(*on_shared);
    }
    adapters.push_back(std::move(loaded));
  }
  return adapters;
}

namespace detail {

// Creates the directory when missing and removes it again unless the write completes.
class directory_transaction {
 public:
  explicit directory_transaction(const std::filesystem::path& dir) : dir_(dir) {
    std::error_code ec;
    if (std::filesystem::exists(dir_, ec)) {
      if (!std::filesystem::is_directory(dir_, ec))
        throw io_error(quoted(dir_) + " exists and is not a directory");
      return;
    }
    if (!std::filesystem::create_directories(dir_, ec) || ec) {
      throw io_error("cannot create directory " + quoted(dir_) + ": " + ec.message());
    }
    created_ = true;
  }
  directory_transaction(const directory_transaction&) = delete;
  directory_transaction& operator=(const directory_transaction&) = delete;
  ~directory_transaction() {
    std::error_code ignored;
    if (created_ && !done_) std::filesystem::remove(dir_, ignored);  // only removes it if empty
  }
  void done() noexcept { done_ = true; }

 private:
  std::filesystem::path dir_;
  bool created_ = false;
  bool done_ = false;
};

// Writes adapter_model.safetensors and adapter_config.json; both become visible only once both
// are complete, and a failure leaves neither temporary file nor a newly created directory.
inline void write_adapter_directory(const std::filesystem::path& dir,
                                    const safetensors_writer& weights,
                                    const nlohmann::json& config) {
  directory_transaction transaction(dir);
  atomic_file weights_file(dir / adapter_weights_file);
  weights.write_to(weights_file);
  atomic_file config_file(dir / adapter_config_file);
  std::string text;
  try {
    text = config.dump(2) + "\n";
  } catch (const nlohmann::json::type_error& error) {
    throw value_error(std::string("adapter config: a string is not valid UTF-8: ") + error.what());
  }
  config_file.write(text.data(), text.size());
  weights_file.commit();
  config_file.commit();
  transaction.done();
}

// A projection larger than the layers need is what PEFT saves for a model's later adapters, so it
// can be written with save_projection; from the seed alone PEFT would size it from the layers.
template <class T>
void check_savable(const model_adapter<T>& model, bool save_projection) {
  if (model.empty()) throw value_error("save: the model adapter has no layers");
  const auto& spec = model.shared_projection().spec();
  for (const auto& [path, layer] : model) {
    if (layer.rank() != spec.rank) {
      throw rank_error("save: layer '" + path + "' has rank " + std::to_string(layer.rank()) +
                       " but PEFT gives every layer the projection's rank " +
                       std::to_string(spec.rank));
    }
  }
  const layer_shape largest = max_extents(model.shapes());
  const bool larger = largest.in != spec.max_in || largest.out != spec.max_out;
  if (larger && !save_projection) {
    throw shape_error("save: the projection is sized for max_in " + std::to_string(spec.max_in) +
                      ", max_out " + std::to_string(spec.max_out) + " but the layers need " +
                      std::to_string(largest.in) + ", " + std::to_string(largest.out) +
                      "; PEFT sizes it from the layers, so a seed-only file would not match "
                      "(save_projection = true writes it)");
  }
}

// A seed-only file is only faithful if PEFT, regenerating from the seed on an AVX2/AVX-512
// machine, gets these exact matrices back.
template <class T>
void check_regenerable(const projection<T>& shared) {
  projection_spec spec = shared.spec();
  const bool from_peft_generator = spec.kind == generator::peft;
  spec.kind = generator::peft;
  spec.rounding = peft_rounding::fused;
  const projection<float> expected(spec);
  const bool same = from_peft_generator && shared.a().template cast<float>() == expected.a() &&
                    shared.b().template cast<float>() == expected.b();
  if (!same) {
    throw value_error(
        "save: the projection is not what PEFT regenerates from projection_prng_key " +
        std::to_string(spec.seed) +
        " (another generator, torch's non-FMA rounding, or matrices loaded from a file); set "
        "save_options::save_projection = true to store it");
  }
}

// Trained tensors can be written back only where the config makes PEFT load them: a
// modules_to_save copy needs modules_to_save, a bias needs bias != "none" (PEFT would report
// the others as unexpected keys and drop them). `what` names the operation in messages.
inline void check_trained_writable(const std::vector<trained_tensor>& trained,
                                   const vera_config& config, const std::string& what) {
  std::set<std::string> keys;
  for (const auto& t : trained) {
    if (t.key.empty()) throw value_error(what + ": a trained tensor has an empty key");
    if (!keys.insert(t.key).second)
      throw value_error(what + ": trained tensor '" + t.key + "' appears twice");
    if (t.bytes.size() != t.expected_bytes()) {
      throw value_error(what + ": trained tensor '" + t.key + "' holds " +
                        std::to_string(t.bytes.size()) + " bytes, but dtype " +
                        dtype_name(t.type) + " and shape " + shape_string(t.shape) + " need " +
                        std::to_string(t.expected_bytes()));
    }
    const bool module_copy = t.kind != trained_kind::bias;
    if (module_copy && (!config.modules_to_save || config.modules_to_save->empty())) {
      throw value_error(what + ": '" + t.key + "' is a " + detail::trained_kind_name(t.kind) +
                        " tensor but the config's field 'modules_to_save' is empty, so PEFT "
                        "would not load it");
    }
    if (!module_copy && config.bias == bias_mode::none) {
      throw value_error(what + ": '" + t.key +
                        "' is a trained bias but the config's field 'bias' is \"none\", so PEFT "
                        "would not load it");
    }
  }
}

// Adds the trained tensors under PEFT's keys, in their own dtype; their bytes are borrowed and
// must outlive the write.
inline void add_trained(safetensors_writer& weights, const std::vector<trained_tensor>& trained) {
  for (const auto& t : trained) {
    weights.add_bytes(peft_key_prefix + t.key, t.type, t.shape, t.bytes.data());
  }
}

// The adapter_config.json save_peft_adapter writes: `base` (its unknown fields kept) with r,
// projection_prng_key, save_projection, d_initial, vera_dropout and fan_in_fan_out taken from the
// model, and target_modules set to the layer paths when `base` names none.
template <class T>
vera_config peft_config_for(const model_adapter<T>& model, vera_config base, bool save_projection) {
  const auto& spec = model.shared_projection().spec();
  base.r = spec.rank;
  base.projection_prng_key = spec.seed;
  base.save_projection = save_projection;
  base.d_initial = model.options().d_initial;
  base.vera_dropout = model.options().dropout;
  base.fan_in_fan_out = model.options().fan_in_fan_out;
  if (base.target_modules.names.empty() && !base.target_modules.pattern) {
    for (const auto& [path, layer] : model) base.target_modules.names.push_back(path);
  }
  return base;
}

}  // namespace detail

/// \brief Writes `model` as a PEFT VeRA adapter directory (created if missing; existing files
///        replaced atomically).
///
/// Seed-only by default: throws value_error unless PEFT regenerates exactly this projection
/// from its seed (generator::peft, FMA rounding). Throws rank_error/shape_error when the layers
/// do not use the projection the way PEFT would (same rank everywhere, projection sized by the
/// largest layer). `config` supplies the remaining fields (base model name, task type, bias,
/// modules_to_save, ...). `trained` (modules_to_save copies, trained biases, as a load keeps
/// them) is written in its own dtype under "base_model.model.<key>"; value_error when the config
/// would not make PEFT load one of them (modules_to_save empty, bias "none"). Throws
/// value_error for a model without layers, io_error when writing fails.
template <class T>
void save_peft_adapter(const model_adapter<T>& model, const std::filesystem::path& dir,
                       const save_options& options = {}, const vera_config& config = {},
                       const std::vector<trained_tensor>& trained = {}) {
  detail::check_savable(model, options.save_projection);
  if (!options.save_projection) detail::check_regenerable(model.shared_projection());
  detail::check_trained_writable(trained, config, "save");
  const auto& shared = model.shared_projection();
  safetensors_writer weights;
  weights.set_metadata("format", "pt");
  for (const auto& [path, layer] : model) {
    weights.add(detail::peft_lambda_b_key(path), options.stored,
                {static_cast<std::uint64_t>(layer.out_features())}, layer.lambda_b().data());
    weights.add(detail::peft_lambda_d_key(path), options.stored, {static_cast<std::uint64_t>(layer.rank())},
                layer.lambda_d().data());
  }
  if (options.save_projection) {
    weights.add(
        detail::peft_vera_a_key, options.stored,
        {static_cast<std::uint64_t>(shared.rank()), static_cast<std::uint64_t>(shared.max_in())},
        shared.a().data());
    weights.add(
        detail::peft_vera_b_key, options.stored,
        {static_cast<std::uint64_t>(shared.max_out()), static_cast<std::uint64_t>(shared.rank())},
        shared.b().data());
  }
  detail::add_trained(weights, trained);
  const vera_config written = detail::peft_config_for(model, config, options.save_projection);
  detail::write_adapter_directory(dir, weights, written.to_json());
}

/// \brief Writes a loaded adapter back: its layers, its config (unknown fields kept) and its
///        trained tensors, as the overload above does.
template <class T>
void save_peft_adapter(const peft_adapter<T>& adapter, const std::filesystem::path& dir,
                       const save_options& options = {}) {
  save_peft_adapter(adapter.model, dir, options, adapter.config, adapter.trained);
}

}  // namespace vera::io
