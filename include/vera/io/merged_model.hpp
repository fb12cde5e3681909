// SPDX-License-Identifier: Apache-2.0
// Merging a model-level adapter into a safetensors model file, with PEFT precision on half weights.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
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
  /// Into a float16/bfloat16 weight, merge as PEFT 0.21.2 merges into such a layer on the CPU,
  /// operation for operation (see peft_half_merge); false merges with vera's float32 evaluator
  /// and the full-precision projection.
  bool match_peft_precision = true;
  /// With match_peft_precision: the projection came from the adapter file (save_projection), so
  /// PEFT computes with it unrounded; false: PEFT regenerated it from the seed and rounded it to
  /// the weight's dtype (round_projection). The peft_adapter overload of add_merged_model takes
  /// it from the load report.
  bool projection_from_file = false;
};

namespace detail {

// A float rounded to `type` (F16 or BF16) and widened back.
inline float round_to(dtype type, float value) {
  unsigned char bytes[4];
  encode(type, &value, 1, bytes);
  float out;
  decode(type, bytes, 1, &out);
  return out;
}

}  // namespace detail

/// \brief W0 += ΔW in place as PEFT 0.21.2 merges into a float16/bfloat16 layer on the CPU:
///        the same operations in the same order, so that the stored result has PEFT's bits.
///
/// `weight` holds W0 (out x in, or in x out with fan_in_fan_out; row-major) decoded from `type`
/// (F16 or BF16), and receives W0 + ΔW before the caller stores it in `type` (one rounding). PEFT's
/// get_delta_weight computes in float32: P = lambda_b ⊙ B (out x r) and Q = lambda_d ⊙ A (r x in),
/// each element one product, then P Q through torch's float32 GEMM, whose kernel accumulates each
/// element over k = 0..r-1 in order with fused multiply-adds from zero; `weight += ΔW` then adds in
/// float32 and rounds once. A and B are rounded to `type` first when `round_projection` (a
/// projection regenerated from the seed, which PEFT casts to the layer's dtype and back); lambdas
/// are used as they are (PEFT's float32 parameters, filled from the file).
/// \throws value_error naming the element when a merged value is not finite (PEFT's safe_merge);
///         `weight` may then be partly updated.
template <class T>
void peft_half_merge(T* weight, const adapter<T>& layer, dtype type, bool round_projection) {
  const index out = layer.out_features(), in = layer.in_features(), rank = layer.rank();
  const auto a = layer.a();
  const auto b = layer.b();
  const auto projection_value = [&](T value) {
    const float f = static_cast<float>(value);
    return round_projection ? detail::round_to(type, f) : f;
  };
  // The two scaled factors, each element one float32 product, stored before the GEMM so that
  // no compiler contraction can fuse them into it.
  std::vector<float> scaled_b(static_cast<std::size_t>(out * rank));
  std::vector<float> scaled_a(static_cast<std::size_t>(rank * in));
  for (index i = 0; i < out; ++i) {
    const float lambda_b = static_cast<float>(layer.lambda_b()(i));
    for (index k = 0; k < rank; ++k) scaled_b[i * rank + k] = lambda_b * projection_value(b(i, k));
  }
  for (index k = 0; k < rank; ++k) {
    const float lambda_d = static_cast<float>(layer.lambda_d()(k));
    for (index j = 0; j < in; ++j) scaled_a[k * in + j] = lambda_d * projection_value(a(k, j));
  }
  const bool transposed = layer.options().fan_in_fan_out;
  // Columns in blocks, so that the block of Q stays in cache while every row of P passes over it.
  constexpr index block = 256;
  std::vector<float> sum(static_cast<std::size_t>(std::min(in, block)));
  for (index j0 = 0; j0 < in; j0 += block) {
    const index width = std::min(block, in - j0);
    for (index i = 0; i < out; ++i) {
      std::fill(sum.begin(), sum.begin() + width, 0.0f);
      for (index k = 0; k < rank; ++k) {
        const float p = scaled_b[i * rank + k];
        const float* q = scaled_a.data() + k * in + j0;
        for (index j = 0; j < width; ++j) sum[j] = std::fma(p, q[j], sum[j]);
      }
      for (index j = 0; j < width; ++j) {
        T& w = transposed ? weight[(j0 + j) * out + i] : weight[i * in + j0 + j];
        const float merged = static_cast<float>(w) + sum[j];
        if (!std::isfinite(merged)) {
          throw value_error("merged weight is not finite at (" +
                            std::to_string(transposed ? j0 + j : i) + ", " +
                            std::to_string(transposed ? i : j0 + j) + ")");
        }
        w = static_cast<T>(merged);
      }
    }
  }
}

namespace detail {

// Checks, before anything is written, that every adapted layer has a floating-point weight of
// its shape in `base`; names the first missing weight and how many more are missing.
template <class T>
void check_merge_targets(const safetensors_view& base, const model_adapter<T>& model) {
  std::vector<std::string> missing;
  for (const auto& [path, layer] : model) {
    if (!base.contains(path + ".weight")) missing.push_back(path);
  }
  if (!missing.empty()) throw missing_weights(base, std::move(missing), "no tensor named");
  for (const auto& [path, layer] : model) {
    const tensor_info& weight = base.at(path + ".weight");
    const auto in = static_cast<std::uint64_t>(layer.in_features());
    const auto out = static_cast<std::uint64_t>(layer.out_features());
    const std::vector<std::uint64_t> expected = layer.options().fan_in_fan_out
                                                    ? std::vector<std::uint64_t>{in, out}
                                                    : std::vector<std::uint64_t>{out, in};
    if (!detail::is_convertible(weight.type)) {
      throw format_error(base.source() + ": cannot merge into '" + weight.name + "' of dtype " +
                         dtype_name(weight.type) + " (quantized weights are not supported)");
    }
    expect_shape(base, weight, expected, "the adapted layer's weight");
  }
}

// The trained tensors that replace base tensors, by target, after checking that each target
// exists in `base` with the same shape and a dtype the trained one converts to, and is not a
// weight the adapter merges into. Wrapper copies replace nothing.
template <class T>
std::map<std::string, const trained_tensor*> replacements(
    const safetensors_view& base, const model_adapter<T>& model,
    const std::vector<const trained_tensor*>& trained) {
  std::map<std::string, const trained_tensor*> by_target;
  std::vector<std::string> missing;
  for (const trained_tensor* tensor : trained) {
    const trained_tensor& t = *tensor;
    if (t.target.empty()) continue;
    if (!by_target.emplace(t.target, &t).second) {
      throw value_error("merge: two trained tensors replace '" + t.target + "'");
    }
    if (t.bytes.size() != t.expected_bytes()) {
      throw value_error("merge: trained tensor '" + t.key + "' holds " +
                        std::to_string(t.bytes.size()) + " bytes, but dtype and shape need " +
                        std::to_string(t.expected_bytes()));
    }
    if (const auto layer = strip_suffix(t.target, ".weight"); !layer.empty() && model.contains(layer)) {
      throw value_error("merge: trained tensor '" + t.key + "' would replace '" + t.target +
                        "', the weight the adapter merges into");
    }
    if (!base.contains(t.target)) missing.push_back(t.target);
  }
  if (!missing.empty()) {
    const trained_tensor& first = *by_target.at(missing.front());
    std::string message = base.source() + ": no tensor named '" + first.target +
                          "' for the adapter's " + detail::trained_kind_name(first.kind) + " tensor '" +
                          first.key + "'";
    if (missing.size() > 1) {
      missing.erase(missing.begin());
      message += " (and " + std::to_string(missing.size()) + " more: " + quoted_list(missing) + ")";
    }
    throw format_error(message);
  }
  for (const auto& [target, t] : by_target) {
    const tensor_info& info = base.at(target);
    if (info.shape != t->shape) {
      throw format_error(base.source() + ": tensor '" + target + "' has shape " +
                         shape_string(info.shape) + " but the adapter's " +
                         detail::trained_kind_name(t->kind) + " tensor '" + t->key + "' that replaces it has " +
                         shape_string(t->shape));
    }
    if (info.type != t->type && !(detail::is_convertible(info.type) && detail::is_convertible(t->type))) {
      throw format_error(base.source() + ": cannot replace '" + target + "' of dtype " +
                         dtype_name(info.type) + " by the adapter's " + dtype_name(t->type) +
                         " tensor '" + t->key + "'" +
                         (detail::is_convertible(t->type) ? " (quantized weights are not supported)" : ""));
    }
  }
  return by_target;
}

// One adapter of a merge and whether its projection came from its file (see merge_options).
template <class T>
struct merge_step {
  const model_adapter<T>* model = nullptr;
  bool projection_from_file = false;
};

// Rounds values in place to `type`, as storing into a float16/bfloat16 weight does.
template <class T>
void round_in_place(dtype type, std::vector<T>& values) {
  std::vector<unsigned char> bytes(values.size() * detail::dtype_size(type));
  encode(type, values.data(), values.size(), bytes.data());
  decode(type, bytes.data(), values.size(), values.data());
}

// add_merged_model's work for adapters merged one after the other, in order.
template <class T>
void add_merged_steps(safetensors_writer& writer, const safetensors_view& base,
                      const std::vector<merge_step<T>>& steps, const merge_options& options,
                      const std::vector<const trained_tensor*>& trained) {
  std::map<std::string, const trained_tensor*> replaced;
  for (const auto& step : steps) {
    check_merge_targets(base, *step.model);
    replaced = replacements(base, *step.model, trained);
  }
  for (const auto& [key, value] : base.metadata()) writer.set_metadata(key, value);
  for (const auto& t : base.tensors()) {
    if (const auto found = replaced.find(t.name); found != replaced.end()) {
      const trained_tensor& source = *found->second;
      if (source.type == t.type) {
        writer.add_bytes(t.name, t.type, t.shape, source.bytes.data());
      } else {
        const auto values = source.values<double>();
        writer.add(t.name, t.type, t.shape, values.data());
      }
      continue;
    }
    const std::string path = strip_suffix(t.name, ".weight");
    std::vector<std::pair<const adapter<T>*, bool>> layers;  // (layer, round its projection)
    for (const auto& step : steps) {
      if (!path.empty() && step.model->contains(path))
        layers.emplace_back(&step.model->at(path), !step.projection_from_file);
    }
    if (layers.empty()) {
      writer.add_bytes(t.name, t.type, t.shape, base.bytes(t));
      continue;
    }
    const bool as_peft_half =
        options.match_peft_precision && (t.type == dtype::f16 || t.type == dtype::bf16);
    writer.add_generated(t.name, t.type, t.shape, [&base, &t, layers, as_peft_half](unsigned char* bytes) {
      auto values = base.values<T>(t);
      Eigen::Map<row_matrix<T>> weight(values.data(), static_cast<index>(t.shape[0]),
                                       static_cast<index>(t.shape[1]));
      for (std::size_t k = 0; k < layers.size(); ++k) {
        const auto& [layer, round] = layers[k];
        try {
          if (as_peft_half) {
            peft_half_merge(values.data(), *layer, t.type, round);
          } else {
            safe_merge(weight, *layer);
          }
        } catch (const value_error& e) {
          throw value_error("merging into '" + t.name + "': " + e.what());
        }
        if (k + 1 < layers.size()) round_in_place(t.type, values);
      }
      encode(t.type, values.data(), values.size(), bytes);
    });
  }
}

}  // namespace detail

/// \brief Adds every tensor of the base model `base` to `writer`, with each adapted layer's
///        `<path>.weight` replaced by its merged weight W0 + ΔW, and each tensor that a trained
///        tensor targets (modules_to_save copies, trained biases) replaced by it.
///
/// Weights are decoded to T, merged with safe-merge semantics (a non-finite result throws
/// value_error naming the tensor, so nothing is written), and stored in their own dtype with a
/// single rounding. Float16/bfloat16 weights are merged with PEFT's operations and order
/// (peft_half_merge) unless options.match_peft_precision is false. A trained tensor is stored in the base
/// tensor's dtype: its bytes unchanged when the dtypes agree, else converted with one rounding, as
/// PEFT's load into the model casts it. Merging happens while the file is written, one weight at a
/// time, and other tensors are copied from `base`'s bytes: `base`, `model` and `trained` must
/// outlive writer.write(). The metadata of `base` is copied. Throws format_error, before
/// anything is added, when an adapted layer has no 2-D floating-point `<path>.weight` of the
/// layer's shape or a trained tensor's target is missing, of another shape, or of a dtype it does
/// not convert to (naming the first and counting the others); value_error when `trained` is
/// inconsistent (two tensors for one target, a target that is an adapted weight).
template <class T>
void add_merged_model(safetensors_writer& writer, const safetensors_view& base,
                      const model_adapter<T>& model, const merge_options& options = {},
                      const std::vector<trained_tensor>& trained = {}) {
  std::vector<const trained_tensor*> pointers;
  for (const auto& t : trained) pointers.push_back(&t);
  detail::add_merged_steps<T>(writer, base, {{&model, options.projection_from_file}}, options,
                              pointers);
}

/// \brief add_merged_model of a loaded adapter: its layers merged, its trained tensors in place.
template <class T>
void add_merged_model(safetensors_writer& writer, const safetensors_view& base,
                      const peft_adapter<T>& adapter, merge_options options = {}) {
  options.projection_from_file = adapter.report.used_saved_projection;
  add_merged_model(writer, base, adapter.model, options, adapter.trained);
}

/// \brief add_merged_model of several adapters of one model (load_peft_adapters), as PEFT's
///        merge_and_unload with all of them active: each adapted weight receives, in order, the
///        ΔW of every adapter that adapts it, rounded to the weight's dtype after each (PEFT adds
///        into the weight in place, one adapter at a time).
///
/// Trained tensors of all adapters replace their targets; two replacing one target are refused
/// (value_error). `options.projection_from_file` is taken from each adapter's load report.
/// Throws as the single-adapter overload, before anything is added; `adapters` must outlive
/// writer.write().
template <class T>
void add_merged_model(safetensors_writer& writer, const safetensors_view& base,
                      const std::vector<peft_adapter<T>>& adapters, const merge_options& options = {}) {
  if (adapters.empty()) throw value_error("merge: no adapter given");
  std::vector<detail::merge_step<T>> steps;
  std::vector<const trained_tensor*> trained;
  for (const auto& adapter : adapters) {
    steps.push_back({&adapter.model, adapter.report.used_saved_projection});
    for (const auto& t : adapter.trained) trained.push_back(&t);
  }
  detail::add_merged_steps<T>(writer, base, steps, options, trained);
}

}  // namespace vera::io
