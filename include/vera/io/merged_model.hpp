// SPDX-License-Identifier: Apache-2.0
// Merging a model-level adapter into a safetensors model file, with PEFT precision on half weights.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "vera/adapter/adapter.hpp"
#include "vera/adapter/projection.hpp"
#include "vera/core/error.hpp"
#include "vera/expr/merge.hpp"
#include "vera/io/dtype.hpp"
#include "vera/io/error.hpp"
#include "vera/io/model_adapter.hpp"
#include "vera/io/peft.hpp"
#include "vera/io/safetensors.hpp"

namespace vera::io {

/// \brief A copy of `model` whose shared projection A, B is rounded to `type` (F16 or BF16;
///        other dtypes leave it unchanged); lambda_b and lambda_d are kept as they are.
///
/// This is the adapter PEFT computes with on a float16/bfloat16 base model: attaching the
/// adapter casts the A/B buffers to the layer's dtype, and the default autocast_adapter_dtype
/// then widens them to float32 again, rounded; the vectors are float32 parameters that a
/// loaded file fills at its own precision (checked with PEFT 0.21.2).
template <class T>
model_adapter<T> round_projection(const model_adapter<T>& model, dtype type) {
  if (type != dtype::f16 && type != dtype::bf16) return model;
  const auto round = [type](T value) {
    unsigned char bytes[8];
    detail::encode(type, &value, 1, bytes);
    T out;
    detail::decode(type, bytes, 1, &out);
    return out;
  };
  const auto& shared = model.shared_projection();
  model_adapter<T> out(
      projection<T>(shared.spec(), shared.a().unaryExpr(round), shared.b().unaryExpr(round)),
      model.shapes(), model.options());
  for (const auto& [path, layer] : model) {
    out.at(path).set_lambdas(layer.lambda_b(), layer.lambda_d());
  }
  return out;
}

/// \brief How add_merged_model computes.
struct merge_options {
  /// Into a float16/bfloat16 weight, merge with the projection rounded to that dtype
  /// (round_projection), as PEFT applies the adapter to such a layer; false merges the
  /// full-precision projection.
  bool match_peft_precision = true;
};

/// \brief Adds every tensor of the base model `base` to `writer`, with each adapted layer's
///        `<path>.weight` replaced by its merged weight W0 + ΔW.
///
/// Weights are decoded to T, merged with safe-merge semantics (a non-finite result throws
/// value_error naming the tensor, so nothing is written), and stored in their own dtype with a
/// single rounding (PEFT rounds ΔW to the weight's dtype before adding, so a float16/bfloat16
/// result can differ from PEFT's in the last bit). Merging happens while the file is written, one
/// weight at a time, and other tensors are copied from `base`'s bytes: `base` and `model` must
/// outlive writer.write(). The metadata of `base` is copied. Throws format_error when an adapted
/// layer has no 2-D floating-point `<path>.weight` of the layer's shape.
template <class T>
void add_merged_model(safetensors_writer& writer, const safetensors_view& base,
                      const model_adapter<T>& model, const merge_options& options = {}) {
  for (const auto& [path, layer] : model) {
    const tensor_info& weight = base.at(path + ".weight");
    const auto in = static_cast<std::uint64_t>(layer.in_features());
    const auto out = static_cast<std::uint64_t>(layer.out_features());
    const std::vector<std::uint64_t> expected = layer.options().fan_in_fan_out
                                                    ? std::vector<std::uint64_t>{in, out}
                                                    : std::vector<std::uint64_t>{out, in};
    if (!is_convertible(weight.type)) {
      throw format_error(base.source() + ": cannot merge into '" + weight.name + "' of dtype " +
                         dtype_name(weight.type) + " (quantized weights are not supported)");
    }
    detail::expect_shape(base, weight, expected, "the adapted layer's weight");
  }
  // One rounded copy per half-precision dtype, owned by the generators that use it.
  std::map<dtype, std::shared_ptr<const model_adapter<T>>> rounded;
  for (const auto& [key, value] : base.metadata()) writer.set_metadata(key, value);
  for (const auto& t : base.tensors()) {
    const std::string suffix = ".weight";
    const std::string path =
        detail::ends_with(t.name, suffix) ? t.name.substr(0, t.name.size() - suffix.size()) : "";
    if (path.empty() || !model.contains(path)) {
      writer.add_bytes(t.name, t.type, t.shape, base.bytes(t));
      continue;
    }
    std::shared_ptr<const model_adapter<T>> copy;
    if (options.match_peft_precision && (t.type == dtype::f16 || t.type == dtype::bf16)) {
      auto& slot = rounded[t.type];
      if (!slot) slot = std::make_shared<const model_adapter<T>>(round_projection(model, t.type));
      copy = slot;
    }
    const adapter<T>& layer = copy ? copy->at(path) : model.at(path);
    writer.add_generated(t.name, t.type, t.shape, [&base, &t, &layer, copy](unsigned char* bytes) {
      auto values = base.values<T>(t);
      Eigen::Map<row_matrix<T>> weight(values.data(), static_cast<index>(t.shape[0]),
                                       static_cast<index>(t.shape[1]));
      try {
        safe_merge(weight, layer);
      } catch (const value_error& e) {
        throw value_error("merging into '" + t.name + "': " + e.what());
      }
      detail::encode(t.type, values.data(), values.size(), bytes);
    });
  }
}

}  // namespace vera::io
