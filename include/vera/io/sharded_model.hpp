// SPDX-License-Identifier: Apache-2.0
// Sharded safetensors models (model.safetensors.index.json + shards): reading the index, layer
// shapes across shards, and merging an adapter into every shard.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <string>
#include <system_error>
#include <vector>

#include <nlohmann/json.hpp>

#include "vera/io/config.hpp"
#include "vera/io/error.hpp"
#include "vera/io/file.hpp"
#include "vera/io/merged_model.hpp"
#include "vera/io/model_adapter.hpp"
#include "vera/io/peft.hpp"
#include "vera/io/safetensors.hpp"

namespace vera::io {

/// \brief The index of a sharded model: which shard file holds each tensor.
struct shard_index {
  std::filesystem::path path;                      ///< the index file
  std::map<std::string, std::string> weight_map;  ///< tensor name -> shard file name
  std::vector<std::string> shards;                ///< distinct shard file names, sorted

  /// \brief The shard that holds `tensor`; throws format_error naming the index when absent.
  const std::string& shard_of(const std::string& tensor) const {
    const auto it = weight_map.find(tensor);
    if (it == weight_map.end()) {
      throw format_error(detail::quoted(path) + ": no tensor '" + tensor + "' in weight_map");
    }
    return it->second;
  }
  /// \brief The index file's directory, where the shards are.
  std::filesystem::path directory() const { return path.parent_path(); }
};

/// \brief Reads `<name>.safetensors.index.json` (the layout Hugging Face writes for large models).
///
/// Throws format_error when the file is not JSON, has no "weight_map" object, maps a tensor to
/// anything but a plain file name in the index's directory (no separators, not "." or ".."), or
/// names no shard.
inline shard_index read_shard_index(const std::filesystem::path& path) {
  constexpr std::size_t max_index_size = std::size_t{64} << 20;
  const std::string source = detail::quoted(path);
  const nlohmann::json json = detail::parse_config_text(read_text_file(path, max_index_size), source);
  if (!json.is_object() || !json.contains("weight_map") || !json["weight_map"].is_object()) {
    throw format_error(source + ": expected an object with a \"weight_map\" object");
  }
  shard_index index;
  index.path = path;
  std::set<std::string> shards;
  for (const auto& [tensor, file] : json["weight_map"].items()) {
    if (!file.is_string()) throw format_error(source + ": weight_map['" + tensor + "'] is not a string");
    const std::string name = file.get<std::string>();
    if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos ||
        name.find('\\') != std::string::npos || name.find('\0') != std::string::npos) {
      throw format_error(source + ": weight_map['" + tensor + "'] = '" + name +
                         "' is not a file name in the index's directory");
    }
    index.weight_map[tensor] = name;
    shards.insert(name);
  }
  if (shards.empty()) throw format_error(source + ": weight_map names no shard");
  index.shards.assign(shards.begin(), shards.end());
  return index;
}

namespace detail {

// Throws format_error naming the index, the first tensor it lacks, how many more and a few of
// them, when weight_map lacks any of `tensors`.
inline void expect_in_index(const shard_index& index, const std::vector<std::string>& tensors,
                            const std::string& what) {
  std::vector<std::string> missing;
  for (const auto& tensor : tensors) {
    if (index.weight_map.count(tensor) == 0) missing.push_back(tensor);
  }
  if (missing.empty()) return;
  std::string message = quoted(index.path) + ": no tensor '" + missing.front() + "' in weight_map";
  if (missing.size() > 1) {
    missing.erase(missing.begin());
    message += " (and " + std::to_string(missing.size()) + " more " + what + ": " +
               quoted_list(missing) + ")";
  }
  throw format_error(message + "; is this the adapter's base model?");
}

inline std::vector<std::string> weight_names(const std::vector<std::string>& paths) {
  std::vector<std::string> names;
  for (const auto& path : paths) names.push_back(path + ".weight");
  return names;
}

}  // namespace detail

/// \brief (in, out) of each layer in `paths` from `<path>.weight` in whichever shard holds it
///        (out x in, or in x out with fan_in_fan_out). Throws format_error naming the first
///        weight the index lacks, how many more it lacks and a few of them.
inline layer_shapes layer_shapes_from_shards(const shard_index& index,
                                             const std::vector<std::string>& paths,
                                             bool fan_in_fan_out) {
  detail::expect_in_index(index, detail::weight_names(paths), "adapted layers' weights");
  std::map<std::string, std::vector<std::string>> by_shard;
  for (const auto& path : paths) by_shard[index.shard_of(path + ".weight")].push_back(path);
  layer_shapes shapes;
  for (const auto& [shard, members] : by_shard) {
    const safetensors_file file(index.directory() / shard);
    for (const auto& [path, shape] : layer_shapes_from_weights(file, members, fan_in_fan_out)) {
      shapes[path] = shape;
    }
  }
  return shapes;
}

/// \brief adapted_layer_shapes for a sharded model: (in, out) and layout of each layer adapted in
///        `adapter`, from `<path>.weight` in whichever shard holds it. Throws as
///        layer_shapes_from_shards and adapted_layer_shapes do.
inline layer_shapes adapted_layer_shapes(const shard_index& index, const safetensors_view& adapter,
                                         const vera_config& config, const layer_layouts& given = {}) {
  const auto paths = peft_layer_paths(adapter);
  detail::expect_in_index(index, detail::weight_names(paths), "adapted layers' weights");
  std::map<std::string, std::vector<std::string>> by_shard;
  for (const auto& path : paths) by_shard[index.shard_of(path + ".weight")].push_back(path);
  std::map<std::string, detail::stored_weight> weights;
  for (const auto& [shard, members] : by_shard) {
    const safetensors_file file(index.directory() / shard);
    // Checked and read as out x in: in = columns, out = rows.
    for (const auto& [path, shape] : layer_shapes_from_weights(file, members, false)) {
      weights[path] = {static_cast<std::uint64_t>(shape.out), static_cast<std::uint64_t>(shape.in),
                       file.source()};
    }
  }
  return detail::resolve_layouts(weights, adapter, config, given);
}

/// \brief Writes a merged copy of the sharded model at `index` into the new directory `out`:
///        every shard with the adapted layers' weights replaced by W0 + ΔW (add_merged_model's
///        rules), plus a copy of the index. Shards without adapted layers are copied tensor by
///        tensor.
///
/// Everything is written into a temporary directory next to `out`, which is renamed to `out`
/// only when complete: a failure leaves no partial output. `out` must not exist, or be an empty
/// directory (io_error otherwise). `progress(done, total)` is called with shards written.
/// `trained` (modules_to_save copies, trained biases) replaces its targets in whichever shard
/// holds them, as add_merged_model does.
/// \throws format_error when the index has no shard for an adapted layer's weight or a trained
///         tensor's target, or a shard is malformed or does not fit the model; value_error for a
///         non-finite merged weight;
///         io_error naming the path when a file cannot be read or written, or when the final
///         rename into `out` fails (e.g. `out` was filled meanwhile; it is left as it is).
template <class T>
void merge_sharded_model(const shard_index& index, const model_adapter<T>& model,
                         const std::filesystem::path& out, const merge_options& options = {},
                         const std::function<void(std::size_t, std::size_t)>& progress = {},
                         const std::vector<trained_tensor>& trained = {}) {
  namespace fs = std::filesystem;
  std::vector<std::string> paths;
  for (const auto& [path, layer] : model) paths.push_back(path);
  detail::expect_in_index(index, detail::weight_names(paths), "adapted layers' weights");
  std::vector<std::string> targets;
  for (const auto& t : trained) {
    if (!t.target.empty()) targets.push_back(t.target);
  }
  detail::expect_in_index(index, targets, "targets of trained tensors");
  std::map<std::string, layer_shapes> layers_by_shard;
  for (const auto& [path, shape] : model.shapes()) {
    layers_by_shard[index.shard_of(path + ".weight")][path] = shape;  // with the layer's layout
  }
  std::map<std::string, std::vector<trained_tensor>> trained_by_shard;
  for (const auto& t : trained) {
    if (!t.target.empty()) trained_by_shard[index.shard_of(t.target)].push_back(t);
  }
  std::error_code ec;
  if (fs::exists(out, ec) && !(fs::is_directory(out, ec) && fs::is_empty(out, ec))) {
    throw io_error(detail::quoted(out) + " exists and is not an empty directory");
  }
  fs::path staging = out;
  staging += ".partial." + std::to_string(std::random_device{}());
  fs::remove_all(staging, ec);
  if (!fs::create_directories(staging, ec) || ec) {
    throw io_error("cannot create " + detail::quoted(staging) + ": " + ec.message());
  }
  try {
    std::size_t done = 0;
    for (const std::string& shard : index.shards) {
      const safetensors_file base(index.directory() / shard);
      // The shard's share of the adapter: same projection, options and vectors.
      const auto found = layers_by_shard.find(shard);
      const layer_shapes none;
      model_adapter<T> part(model.shared_projection(), found == layers_by_shard.end() ? none : found->second,
                            model.options());
      for (auto& [path, layer] : part) {
        const adapter<T>& source = model.at(path);
        layer.set_lambdas(source.lambda_b(), source.lambda_d());
      }
      const auto replacing = trained_by_shard.find(shard);
      const std::vector<trained_tensor> no_trained;
      safetensors_writer writer;
      add_merged_model(writer, base, part, options,
                       replacing == trained_by_shard.end() ? no_trained : replacing->second);
      writer.write(staging / shard);
      if (progress) progress(++done, index.shards.size());
    }
    detail::atomic_file index_copy(staging / index.path.filename());
    const std::string text = read_text_file(index.path, std::size_t{64} << 20);
    index_copy.write(text.data(), text.size());
    index_copy.commit();
    // The empty directory checked above; the error_code overloads keep failures io_errors.
    if (fs::exists(out, ec)) {
      fs::remove(out, ec);
      if (ec) throw io_error("cannot replace " + detail::quoted(out) + ": " + ec.message());
    }
    fs::rename(staging, out, ec);
    if (ec) {
      throw io_error("cannot rename " + detail::quoted(staging) + " to " + detail::quoted(out) + ": " +
                     ec.message());
    }
  } catch (...) {
    fs::remove_all(staging, ec);
    throw;
  }
}

}  // namespace vera::io
