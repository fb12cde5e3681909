// SPDX-License-Identifier: Apache-2.0
// PEFT adapter_config.json: typed VeRA fields over the JSON object, so unknown fields survive.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "vera/core/error.hpp"
#include "vera/io/error.hpp"
#include "vera/io/file.hpp"

namespace vera::io {

namespace detail {

/// Largest adapter_config.json accepted, in bytes.
inline constexpr std::size_t max_config_size = std::size_t{16} << 20;

}  // namespace detail

/// \brief Which modules an adapter targets, as PEFT's `target_modules` says.
///
/// Either a list of names (PEFT adapts a module when its path equals a name or ends with
/// "." + name) or one regular expression matched against whole paths; absent means PEFT chose
/// from the model type.
struct target_modules {
  std::vector<std::string> names;  ///< module names; used when `pattern` is empty
  std::optional<std::string> pattern;  ///< a regular expression over whole module paths

  friend bool operator==(const target_modules& a, const target_modules& b) {
    return a.names == b.names && a.pattern == b.pattern;
  }
  friend bool operator!=(const target_modules& a, const target_modules& b) { return !(a == b); }
};

/// \brief Which base-layer biases PEFT trains (VeRA itself adds no bias).
///        The values are PEFT's "none", "all" and "vera_only".
enum class bias_mode { none, all, vera_only };

/// \brief The contents of a PEFT VeRA adapter_config.json.
///
/// Every VeRA field is a typed member with PEFT's default. `json` keeps the object the config
/// was read from; to_json() writes the members over it, so fields vera does not know (e.g.
/// `peft_version`, `auto_mapping`) survive a read/write round trip, and a field whose value is
/// unchanged keeps its original spelling (`"layers_to_transform": 3` is not rewritten as `[3]`).
struct vera_config {
  std::int64_t r = 256;  ///< rank of the shared projection (PEFT's default when absent)
  io::target_modules target_modules;  ///< adapted modules
  std::uint64_t projection_prng_key =
      0;  ///< torch.manual_seed semantics: negative keys wrap mod 2^64
  bool save_projection = true;  ///< whether A and B are stored in the weights file
  double vera_dropout = 0.0;  ///< dropout on the adapter input, in [0, 1)
  double d_initial = 0.1;  ///< initial value of every lambda_d
  bool fan_in_fan_out = false;  ///< W0 stored as in x out (GPT-2 Conv1D)
  bias_mode bias = bias_mode::none;  ///< which base biases PEFT trains
  /// Modules PEFT trains and saves whole (e.g. the classifier of a SEQ_CLS adapter); their
  /// tensors in the adapter file replace the base model's in a merge.
  std::optional<std::vector<std::string>> modules_to_save;
  bool init_weights = true;  ///< false: PEFT's random init (b = 1, d ~ N(0, 1)); see init_kind
  /// PEFT adapts only layers with these indices.
  std::optional<std::vector<std::int64_t>> layers_to_transform;
  /// PEFT: module path names before the layer index.
  std::optional<std::vector<std::string>> layers_pattern;
  std::optional<std::string> task_type;  ///< PEFT task type, e.g. "CAUSAL_LM"
  bool inference_mode = false;  ///< PEFT's flag for adapters saved for inference
  /// The base model the adapter was trained on.
  std::optional<std::string> base_model_name_or_path;
  std::optional<std::string> revision;  ///< the base model's revision

  nlohmann::json json = nlohmann::json::object();  ///< the object read, kept for unknown fields

  /// \brief Reads the typed fields from `object`; throws format_error naming `source` and the
  ///        field when peft_type is not "VERA" or a field has the wrong type or range. An absent
  ///        field takes PEFT's default (r = 256, as VeraConfig has it).
  static vera_config from_json(const nlohmann::json& object,
                               const std::string& source = "adapter_config.json");

  /// \brief Parses JSON text (duplicate keys and absurd nesting are errors), then from_json().
  /// \throws format_error naming `source` for invalid JSON or an invalid config.
  static vera_config parse(const std::string& text,
                           const std::string& source = "adapter_config.json");

  /// \brief Reads `path`, or `path`/adapter_config.json when `path` is a directory.
  /// \throws io_error when the file cannot be read; format_error when it is larger than
  ///         16 MiB, not valid JSON, or not a valid VeRA config (see from_json).
  static vera_config read(const std::filesystem::path& path);

  /// \brief The JSON object: the kept object with every typed field written over it.
  nlohmann::json to_json() const;

  /// \brief Writes to_json() to `path` atomically, indented like PEFT's files.
  /// \throws value_error when a string field is not valid UTF-8; io_error when writing fails.
  void write(const std::filesystem::path& path) const;
};

namespace detail {

// The name of enumerator `value` of an enum numbered from 0: names[value], in declaration order;
// the first name for a value outside the list.
template <class Enum, std::size_t N>
const char* enum_name(Enum value, const char* const (&names)[N]) {
  const auto i = static_cast<std::size_t>(value);
  return i < N ? names[i] : names[0];
}

inline const char* bias_name(bias_mode mode) { return enum_name(mode, {"none", "all", "vera_only"}); }

// Reads one field of a config object with a message that names file, field, value and the
// expected type.
class config_reader {
 public:
  config_reader(const nlohmann::json& object, std::string source)
      : object_(object), source_(std::move(source)) {}

  [[noreturn]] void fail(const std::string& field, const std::string& problem) const {
    throw format_error(source_ + ": field '" + field + "' " + problem);
  }
  [[noreturn]] void wrong_type(const std::string& field, const nlohmann::json& value,
                               const char* expected) const {
    fail(field, std::string("is a JSON ") + value.type_name() + " (" + value.dump().substr(0, 40) +
                    "), expected " + expected);
  }

  const nlohmann::json* find(const std::string& field) const {
    const auto it = object_.find(field);
    return it == object_.end() ? nullptr : &*it;
  }
  bool present(const std::string& field) const {
    const auto* value = find(field);
    return value != nullptr && !value->is_null();
  }

  void boolean(const std::string& field, bool& out) const {
    if (!present(field)) return;
    const auto& value = *find(field);
    if (!value.is_boolean()) wrong_type(field, value, "true or false");
    out = value.get<bool>();
  }

  void number(const std::string& field, double& out) const {
    if (!present(field)) return;
    const auto& value = *find(field);
    if (!value.is_number()) wrong_type(field, value, "a number");
    out = value.get<double>();
    if (!std::isfinite(out)) fail(field, "is not finite");
  }

  std::int64_t integer(const std::string& field, const nlohmann::json& value) const {
    if (value.is_number_unsigned()) {
      const auto u = value.get<std::uint64_t>();
      if (u > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
        fail(field, "is " + value.dump() + ", too large");
      return static_cast<std::int64_t>(u);
    }
    if (!value.is_number_integer()) wrong_type(field, value, "an integer");
    return value.get<std::int64_t>();
  }

  void optional_string(const std::string& field, std::optional<std::string>& out) const {
    if (!present(field)) {
      out.reset();
      return;
    }
    const auto& value = *find(field);
    if (!value.is_string()) wrong_type(field, value, "a string or null");
    out = value.get<std::string>();
  }

  std::vector<std::string> strings(const std::string& field, const nlohmann::json& value,
                                   bool scalar_ok) const {
    if (scalar_ok && value.is_string()) return {value.get<std::string>()};
    if (!value.is_array())
      wrong_type(field, value, scalar_ok ? "a string or a list of strings" : "a list of strings");
    std::vector<std::string> out;
    for (std::size_t i = 0; i < value.size(); ++i) {
      if (!value[i].is_string())
        wrong_type(field + "[" + std::to_string(i) + "]", value[i], "a string");
      out.push_back(value[i].get<std::string>());
    }
    return out;
  }

  io::target_modules targets(const nlohmann::json& value) const {
    io::target_modules out;
    if (value.is_null()) return out;
    if (value.is_string()) {
      out.pattern = value.get<std::string>();
      return out;
    }
    out.names = strings("target_modules", value, false);
    return out;
  }

  std::optional<std::vector<std::int64_t>> layer_indices(const nlohmann::json& value) const {
    if (value.is_null()) return std::nullopt;
    if (value.is_number()) return std::vector<std::int64_t>{integer("layers_to_transform", value)};
    if (!value.is_array())
      wrong_type("layers_to_transform", value, "an integer, a list of integers or null");
    std::vector<std::int64_t> out;
    for (std::size_t i = 0; i < value.size(); ++i) {
      out.push_back(integer("layers_to_transform[" + std::to_string(i) + "]", value[i]));
    }
    return out;
  }

  std::optional<std::vector<std::string>> patterns(const nlohmann::json& value) const {
    if (value.is_null()) return std::nullopt;
    return strings("layers_pattern", value, true);
  }

 private:
  const nlohmann::json& object_;
  std::string source_;
};

inline nlohmann::json targets_json(const target_modules& targets) {
  if (targets.pattern) return *targets.pattern;
  if (targets.names.empty()) return nullptr;
  return targets.names;
}

template <class T>
nlohmann::json optional_json(const std::optional<T>& value) {
  if (!value) return nullptr;
  return *value;
}

}  // namespace detail

inline vera_config vera_config::from_json(const nlohmann::json& object, const std::string& source) {
  if (!object.is_object()) {
    throw format_error(source + ": expected a JSON object, got a JSON " +
                       std::string(object.type_name()));
  }
  const detail::config_reader in(object, source);
  vera_config config;
  config.json = object;

  if (!in.present("peft_type"))
    in.fail("peft_type", "is missing (a PEFT adapter config names its method)");
  const auto& type = *in.find("peft_type");
  if (!type.is_string()) in.wrong_type("peft_type", type, "a string");
  if (type.get<std::string>() != "VERA") {
    in.fail("peft_type",
            "is '" + type.get<std::string>() + "', expected 'VERA' (this is not a VeRA adapter)");
  }

  // VeraConfig's default rank; PEFT writes r into every config it saves.
  if (in.present("r")) config.r = in.integer("r", *in.find("r"));
  if (config.r <= 0 || config.r > (std::int64_t{1} << 31)) {
    in.fail("r", "is " + std::to_string(config.r) + ", expected a positive rank");
  }

  if (const auto* value = in.find("target_modules")) config.target_modules = in.targets(*value);

  if (in.present("projection_prng_key")) {
    const auto& key = *in.find("projection_prng_key");
    if (key.is_number_unsigned()) {
      config.projection_prng_key = key.get<std::uint64_t>();
    } else if (key.is_number_integer()) {
      // torch.Generator.manual_seed accepts negative seeds and reinterprets them modulo 2^64.
      config.projection_prng_key = static_cast<std::uint64_t>(key.get<std::int64_t>());
    } else {
      in.wrong_type("projection_prng_key", key, "an integer");
    }
  }

  in.boolean("save_projection", config.save_projection);
  in.number("vera_dropout", config.vera_dropout);
  if (!(config.vera_dropout >= 0.0 && config.vera_dropout < 1.0)) {
    in.fail("vera_dropout",
            "is " + std::to_string(config.vera_dropout) + ", expected a probability in [0, 1)");
  }
  in.number("d_initial", config.d_initial);
  in.boolean("fan_in_fan_out", config.fan_in_fan_out);

  if (in.present("bias")) {
    const auto& bias = *in.find("bias");
    if (!bias.is_string()) in.wrong_type("bias", bias, "\"none\", \"all\" or \"vera_only\"");
    const auto name = bias.get<std::string>();
    if (name == "none") {
      config.bias = bias_mode::none;
    } else if (name == "all") {
      config.bias = bias_mode::all;
    } else if (name == "vera_only") {
      config.bias = bias_mode::vera_only;
    } else {
      in.fail("bias", "is '" + name + "', expected \"none\", \"all\" or \"vera_only\"");
    }
  }

  if (in.present("modules_to_save"))
    config.modules_to_save = in.strings("modules_to_save", *in.find("modules_to_save"), false);
  in.boolean("init_weights", config.init_weights);
  if (const auto* value = in.find("layers_to_transform"))
    config.layers_to_transform = in.layer_indices(*value);
  if (const auto* value = in.find("layers_pattern")) config.layers_pattern = in.patterns(*value);
  in.optional_string("task_type", config.task_type);
  in.boolean("inference_mode", config.inference_mode);
  in.optional_string("base_model_name_or_path", config.base_model_name_or_path);
  in.optional_string("revision", config.revision);
  return config;
}

namespace detail {

// JSON text of a config: any nesting deeper than `max_depth` or a repeated top-level key is
// refused (a JSON object would silently keep only the last of two "r" fields).
inline nlohmann::json parse_config_text(const std::string& text, const std::string& source) {
  constexpr int max_depth = 64;
  std::set<std::string> keys;
  const auto watch = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using event_t = nlohmann::json::parse_event_t;
    if ((event == event_t::object_start || event == event_t::array_start) && depth > max_depth) {
      throw format_error(source + ": JSON nested more than " + std::to_string(max_depth) +
                         " levels deep");
    }
    if (event == event_t::key && depth == 1 && !keys.insert(parsed.get<std::string>()).second) {
      throw format_error(source + ": field '" + parsed.get<std::string>() + "' appears twice");
    }
    return true;
  };
  try {
    return nlohmann::json::parse(text, watch);
  } catch (const nlohmann::json::exception& e) {
    // parse_error for syntax, out_of_range for numbers beyond double (e.g. 1e999)
    throw format_error(source + ": not valid JSON: " + e.what());
  }
}

}  // namespace detail

inline vera_config vera_config::parse(const std::string& text, const std::string& source) {
  return from_json(detail::parse_config_text(text, source), source);
}

inline vera_config vera_config::read(const std::filesystem::path& path) {
  const auto file = std::filesystem::is_directory(path) ? path / "adapter_config.json" : path;
  return parse(read_text_file(file, detail::max_config_size), "'" + file.string() + "'");
}

inline nlohmann::json vera_config::to_json() const {
  nlohmann::json out = json.is_object() ? json : nlohmann::json::object();
  const detail::config_reader kept(out, "kept config");
  // Keeps the original spelling of a polymorphic field when it still means the same value.
  const auto same = [&](const char* field, auto&& parse_kept, const auto& typed) {
    const auto* value = kept.find(field);
    if (value == nullptr) return false;
    try {
      return parse_kept(*value) == typed;
    } catch (const format_error&) {
      return false;
    }
  };
  out["peft_type"] = "VERA";
  out["r"] = r;
  if (!same(
          "target_modules", [&](const nlohmann::json& v) { return kept.targets(v); },
          target_modules)) {
    out["target_modules"] = detail::targets_json(target_modules);
  }
  out["projection_prng_key"] = projection_prng_key;
  out["save_projection"] = save_projection;
  out["vera_dropout"] = vera_dropout;
  out["d_initial"] = d_initial;
  out["fan_in_fan_out"] = fan_in_fan_out;
  out["bias"] = detail::bias_name(bias);
  out["modules_to_save"] = detail::optional_json(modules_to_save);
  out["init_weights"] = init_weights;
  if (!same(
          "layers_to_transform", [&](const nlohmann::json& v) { return kept.layer_indices(v); },
          layers_to_transform)) {
    out["layers_to_transform"] = detail::optional_json(layers_to_transform);
  }
  if (!same(
          "layers_pattern", [&](const nlohmann::json& v) { return kept.patterns(v); },
          layers_pattern)) {
    out["layers_pattern"] = detail::optional_json(layers_pattern);
  }
  out["task_type"] = detail::optional_json(task_type);
  out["inference_mode"] = inference_mode;
  out["base_model_name_or_path"] = detail::optional_json(base_model_name_or_path);
  out["revision"] = detail::optional_json(revision);
  return out;
}

namespace detail {

inline void write_json_file(const nlohmann::json& json, const std::filesystem::path& path) {
  std::string text;
  try {
    text = json.dump(2) + "\n";
  } catch (const nlohmann::json::type_error& error) {
    throw value_error(std::string("cannot write ") + quoted(path) +
                      ": a string is not valid UTF-8: " + error.what());
  }
  atomic_file file(path);
  file.write(text.data(), text.size());
  file.commit();
}

}  // namespace detail

inline void vera_config::write(const std::filesystem::path& path) const {
  detail::write_json_file(to_json(), path);
}

/// \brief adapter_config.json of a PEFT LoRA adapter that reproduces a VeRA adapter exactly.
///
/// lora_alpha = r makes PEFT's scaling alpha / r equal 1, so ΔW = lora_B lora_A. Fields that
/// mean the same in both methods (dropout, fan_in_fan_out, task_type, base model) are copied from
/// `source`; `targets` lists the adapted module paths. modules_to_save and bias are left at
/// null and "none": export_lora sets them from `source` when it copies trained tensors.
inline nlohmann::json lora_config_json(const vera_config& source, std::int64_t r,
                                       const std::vector<std::string>& targets) {
  nlohmann::json out = nlohmann::json::object();
  out["peft_type"] = "LORA";
  out["r"] = r;
  out["lora_alpha"] = r;
  out["target_modules"] = targets;
  out["lora_dropout"] = source.vera_dropout;
  out["fan_in_fan_out"] = source.fan_in_fan_out;
  out["bias"] = "none";
  out["use_rslora"] = false;
  out["use_dora"] = false;
  out["init_lora_weights"] = true;
  out["modules_to_save"] = nullptr;
  out["layers_to_transform"] = nullptr;  // targets are full paths already
  out["layers_pattern"] = nullptr;
  out["rank_pattern"] = nlohmann::json::object();
  out["alpha_pattern"] = nlohmann::json::object();
  out["task_type"] = detail::optional_json(source.task_type);
  out["inference_mode"] = true;
  out["base_model_name_or_path"] = detail::optional_json(source.base_model_name_or_path);
  out["revision"] = detail::optional_json(source.revision);
  return out;
}

}  // namespace vera::io
