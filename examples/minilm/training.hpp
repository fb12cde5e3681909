// SPDX-License-Identifier: Apache-2.0
// Training BERT's classifier with VeRA on every layer's query and value: the adapters (on PEFT's
// projection), the cross-entropy loss and the backward pass through the frozen encoder.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <vera/io/model_adapter.hpp>
#include <vera/vera.hpp>

#include "bert.hpp"

namespace minilm {

/// \brief The module path of layer `layer`'s attention.self.`which` ("query", "value") in
///        BertForSequenceClassification: PEFT's names for the adapted layers.
inline std::string attention_path(index layer, const std::string& which) {
  return "bert.encoder.layer." + std::to_string(layer) + ".attention.self." + which;
}

/// \brief VeRA on every layer's query and value with one shared projection, as PEFT creates it
///        for target_modules ["query", "value"]: A, B from projection_prng_key `seed` (PEFT's
///        generator), b = 0 and d = d_initial.
template <class T>
vera::io::model_adapter<T> query_value_adapters(const bert_config& config, index rank, std::uint64_t seed,
                                                double d_initial = 0.1) {
  vera::io::layer_shapes shapes;
  for (index i = 0; i < config.layers; ++i)
    for (const char* which : {"query", "value"})
      shapes[attention_path(i, which)] = {config.hidden_size, config.hidden_size};
  vera::adapter_options options;
  options.d_initial = d_initial;
  return vera::io::model_adapter<T>::generate(seed, rank, shapes, options);
}

/// \brief Per-layer pointers into `adapters` (made by query_value_adapters) for the forward pass.
template <class T>
std::vector<attention_adapters<T>> attention_adapters_of(const vera::io::model_adapter<T>& adapters,
                                                         index layers) {
  std::vector<attention_adapters<T>> out(static_cast<std::size_t>(layers));
  for (index i = 0; i < layers; ++i)
    out[static_cast<std::size_t>(i)] = {&adapters.at(attention_path(i, "query")),
                                        &adapters.at(attention_path(i, "value"))};
  return out;
}

/// \brief dL/dA and dL/dB of a LoRA adapter.
template <class T>
struct lora_gradients {
  matrix_t<T> a, b;
};

/// \brief dL/db and dL/dd of one layer's query and value VeRA adapters, or dL/dA, dL/dB of its
///        LoRA ones.
template <class T>
struct attention_gradients {
  vera::gradients<T> query, value;
  lora_gradients<T> lora_query, lora_value;
};

/// \brief Everything the backward pass computes for the trained parameters.
template <class T>
struct classifier_gradients {
  std::vector<attention_gradients<T>> layers;  ///< one per layer; untouched without adapters
  matrix_t<T> head_weight;                     ///< labels x hidden
  vec_t<T> head_bias;                          ///< labels
};

/// \brief Buffers of the backward pass, reused between steps.
template <class T>
struct backward_workspace {
  matrix_t<T> pooled, pooler_in, cls;   ///< dL/d of the pooler's output, its input before tanh, [CLS]
  matrix_t<T> hidden;                   ///< dL/d of the current layer's output, then of its input
  matrix_t<T> output_sum, intermediate, attention_out, attention_sum, context;
  matrix_t<T> q, k, v;
  std::vector<row_matrix_t<T>> scores;  ///< per thread: one head's dL/dp, then dL/d(scores)
  vec_t<T> row, row2;
  vera::workspace<T> adapter_scratch;   ///< vera's scratch for the adapters' gradients
  matrix_t<T> lora_p;                   ///< dL/d(X Aᵀ) of a LoRA adapter
};

/// \brief Mean cross-entropy of `logits` (batch x labels) against `labels`; writes its gradient
///        dL/dlogits = (softmax - one-hot) / batch into `d_logits`.
/// \throws vera::value_error for a label count other than the batch or a label out of range.
template <class T>
T cross_entropy(const matrix_t<T>& logits, const std::vector<int>& labels, matrix_t<T>& d_logits) {
  if (static_cast<index>(labels.size()) != logits.rows())
    throw vera::value_error("cross_entropy: " + std::to_string(labels.size()) + " labels for " +
                            std::to_string(logits.rows()) + " rows of logits");
  const T inv_batch = T(1) / static_cast<T>(logits.rows());
  d_logits.resize(logits.rows(), logits.cols());
  T loss = 0;
  for (index r = 0; r < logits.rows(); ++r) {
    const int label = labels[static_cast<std::size_t>(r)];
    if (label < 0 || label >= logits.cols())
      throw vera::value_error("cross_entropy: label " + std::to_string(label) + " outside [0, " +
                              std::to_string(logits.cols()) + ")");
    const T top = logits.row(r).maxCoeff();
    d_logits.row(r) = (logits.row(r).array() - top).exp().matrix();
    const T sum = d_logits.row(r).sum();
    loss += std::log(sum) - (logits(r, label) - top);
    d_logits.row(r) *= inv_batch / sum;
    d_logits(r, label) -= inv_batch;
  }
  return loss * inv_batch;
}

namespace detail {

/// \brief dL/dx of y = gamma ⊙ hat + beta with hat = (x - mean) * rstd, per row, from dy.
template <class T>
void layer_norm_backward(const matrix_t<T>& dy, const matrix_t<T>& hat, const vec_t<T>& rstd,
                         const vec_t<T>& gamma, vec_t<T>& mean, vec_t<T>& mean_with_hat, matrix_t<T>& dx) {
  const T inv_width = T(1) / static_cast<T>(dy.cols());
  dx = (dy.array().rowwise() * gamma.transpose().array()).matrix();  // dL/dhat
  mean.noalias() = dx.rowwise().sum() * inv_width;
  mean_with_hat = (dx.array() * hat.array()).rowwise().sum() * inv_width;
  dx.colwise() -= mean;
  dx.array() -= hat.array().colwise() * mean_with_hat.array();
  dx.array().colwise() *= rstd.array();
}

/// \brief d ⊙= GELU'(x), GELU'(x) = Φ(x) + x φ(x) for the erf form.
template <class T>
void gelu_backward(const matrix_t<T>& x, matrix_t<T>& d) {
  const T inv_sqrt2 = T(0.70710678118654752440), inv_sqrt_2pi = T(0.39894228040143267794);
  const index cols = x.cols(), threads = loop_threads();
  parallel_for(threads, [&](index t) {
    const index first = cols * t / threads, width = cols * (t + 1) / threads - first;
    const auto in = x.middleCols(first, width).array();
    d.middleCols(first, width).array() *=
        T(0.5) * (T(1) + (in * inv_sqrt2).erf()) + in * inv_sqrt_2pi * (T(-0.5) * in.square()).exp();
  });
}

/// \brief dL/dq, dL/dk, dL/dv of every sequence's and head's attention from dL/dcontext.
template <class T>
void attention_backward(const bert_config& config, const basic_bert_workspace<T>& ws, const layer_activations<T>& a,
                        backward_workspace<T>& g) {
  const index length = ws.length, heads = config.heads, d = config.head_size();
  const T scale = T(1) / std::sqrt(static_cast<T>(d));
  g.q.resize(a.q.rows(), a.q.cols());
  g.k.resize(a.k.rows(), a.k.cols());
  g.v.resize(a.v.rows(), a.v.cols());
  g.scores.resize(static_cast<std::size_t>(loop_threads()));
  parallel_for(ws.batch * heads, [&](index pair) {
    const index b = pair / heads, h = pair % heads;
    row_matrix_t<T>& scores = g.scores[static_cast<std::size_t>(loop_thread())];
    const auto p = a.probabilities.middleRows(pair * length, length);
    const auto dc = g.context.block(b * length, h * d, length, d);
    {
      const profile::scope timer(profile::phase::attention_backward_gemm);
      g.v.block(b * length, h * d, length, d).noalias() = p.transpose() * dc;
      scores.noalias() = dc * a.v.block(b * length, h * d, length, d).transpose();  // dL/dp
    }
    {
      const profile::scope timer(profile::phase::softmax_backward);
      // Softmax: ds = p ⊙ (dp - rowsum(p ⊙ dp)); padded keys have p = 0 and get nothing.
      for (index r = 0; r < length; ++r) {
        auto ds = scores.row(r).array();
        const auto pr = p.row(r).array();
        const T dot = (ds * pr).sum();
        ds = pr * (ds - dot) * scale;
      }
    }
    const profile::scope timer(profile::phase::attention_backward_gemm);
    g.q.block(b * length, h * d, length, d).noalias() = scores * a.k.block(b * length, h * d, length, d);
    g.k.block(b * length, h * d, length, d).noalias() = scores.transpose() * a.q.block(b * length, h * d, length, d);
  });
}

/// \brief dL/dx (tokens x in) += dL/dy of an adapted (or, without adapter, frozen) projection,
///        and the adapter's gradients.
template <class T>
void projection_backward(const matrix_t<T>& dy, const basic_linear_weights<T>& w, const vera::adapter<T>* ad,
                         const vera::forward_context<T>& ctx, vera::gradients<T>& grads, matrix_t<T>* dx,
                         vera::workspace<T>& scratch) {
  if (ad == nullptr) return;
  // Into the same buffers every step: an optimizer may hold them.
  if (ad != nullptr) vera::parameter_gradients(dy, *ad, ctx).using_workspace(scratch).eval_to(grads);
  if (dx == nullptr) return;
  vera::input_gradient(dy, w.weight, *ad, ctx).using_workspace(scratch).add_to(*dx);
}

/// \brief As projection_backward for a frozen projection with LoRA (or, without, nothing):
///        dB = s Gᵀ P, dP = s G B, dA = dPᵀ X, dX += G W0 + dP A, with P = X Aᵀ from the forward
///        and X the projection's input.
template <class T>
void lora_backward(const matrix_t<T>& dy, const basic_linear_weights<T>& w, const lora_adapter<T>* lora,
                   const matrix_t<T>& lora_p, const matrix_t<T>& x, lora_gradients<T>& grads, matrix_t<T>* dx,
                   matrix_t<T>& dp) {
  if (dx != nullptr) detail::gemm(*dx, dy, w.weight, /*accumulate=*/true);
  if (lora == nullptr) return;
  grads.b.resize(lora->b.rows(), lora->b.cols());
  grads.b.noalias() = (dy.transpose() * lora_p) * lora->scale;
  dp.resize(dy.rows(), lora->b.cols());
  dp.noalias() = (dy * lora->b) * lora->scale;
  grads.a.resize(lora->a.rows(), lora->a.cols());
  grads.a.noalias() = dp.transpose() * x;
  if (dx != nullptr) dx->noalias() += dp * lora->a;
}

/// \brief One encoder layer backward: g.hidden holds dL/d(layer output) and, when
///        `input_needed`, becomes dL/d(layer input).
template <class T>
void layer_backward(const bert_config& config, const basic_layer_weights<T>& w, const attention_adapters<T>& ad,
                    const basic_bert_workspace<T>& ws, const layer_activations<T>& a, const matrix_t<T>& x,
                    bool input_needed, attention_gradients<T>& grads, backward_workspace<T>& g) {
  using profile::phase;
  {
    const profile::scope timer(phase::layer_norm_backward);
    layer_norm_backward(g.hidden, a.output_hat, a.output_rstd, w.output_norm.gamma, g.row, g.row2, g.output_sum);
  }
  {
    const profile::scope timer(phase::ffn_backward);
    g.intermediate.resize(g.output_sum.rows(), w.output.weight.cols());
    detail::gemm(g.intermediate, g.output_sum, w.output.weight);
  }
  {
    const profile::scope timer(phase::gelu_backward);
    gelu_backward(a.intermediate_in, g.intermediate);
  }
  {
    const profile::scope timer(phase::ffn_backward);
    g.attention_out = g.output_sum;  // the residual around the feed-forward block
    detail::gemm(g.attention_out, g.intermediate, w.intermediate.weight, /*accumulate=*/true);
  }
  {
    const profile::scope timer(phase::layer_norm_backward);
    layer_norm_backward(g.attention_out, a.attention_hat, a.attention_rstd, w.attention_norm.gamma, g.row,
                        g.row2, g.attention_sum);
  }
  {
    const profile::scope timer(phase::attention_output_backward);
    g.context.resize(g.attention_sum.rows(), w.attention_output.weight.cols());
    detail::gemm(g.context, g.attention_sum, w.attention_output.weight);
  }
  attention_backward(config, ws, a, g);
  matrix_t<T>* dx = nullptr;
  if (input_needed) {
    const profile::scope timer(phase::k_backward);
    g.hidden = g.attention_sum;  // the residual around attention
    detail::gemm(g.hidden, g.k, w.key.weight, /*accumulate=*/true);
    dx = &g.hidden;
  }
  const profile::scope timer(phase::qv_backward);
  if (ad.query != nullptr && ad.value != nullptr) {
    const auto group = vera::siblings(vera::sibling(w.query.weight, w.query.bias, *ad.query),
                                      vera::sibling(w.value.weight, w.value.bias, *ad.value));
    vera::parameter_gradients(group, a.query_value_context, g.q, g.v)
        .using_workspace(g.adapter_scratch)
        .eval_to(grads.query, grads.value);
    // Both adapters' input-gradient terms meet in one product.
    if (dx != nullptr) vera::input_gradient(group, a.query_value_context, g.q, g.v).using_workspace(g.adapter_scratch).add_to(*dx);
    return;
  }
  projection_backward(g.q, w.query, ad.query, a.query_context, grads.query, dx, g.adapter_scratch);
  projection_backward(g.v, w.value, ad.value, a.value_context, grads.value, dx, g.adapter_scratch);
  if (ad.query == nullptr)
    lora_backward(g.q, w.query, ad.lora_query, a.lora_query_p, x, grads.lora_query, dx, g.lora_p);
  if (ad.value == nullptr)
    lora_backward(g.v, w.value, ad.lora_value, a.lora_value_p, x, grads.lora_value, dx, g.lora_p);
}

}  // namespace detail

/// \brief Gradients of the loss behind `d_logits` (batch x labels) for the classifier head and,
///        when `adapters` is not empty, every adapter, after model.forward(tokens, ws, adapters,
///        pass::train) filled `ws`. Frozen weights get no gradient; the pass goes through them
///        down to the first layer's query and value (never into the embeddings).
template <class T>
void backward(const basic_bert_classifier<T>& model, const std::vector<attention_adapters<T>>& adapters,
              const basic_bert_workspace<T>& ws, const matrix_t<T>& d_logits, classifier_gradients<T>& grads,
              backward_workspace<T>& g) {
  const auto& encoder = model.encoder();
  const bert_config& config = encoder.config();
  {
    const profile::scope timer(profile::phase::head_backward);
    grads.head_weight.noalias() = d_logits.transpose() * ws.pooled;
    grads.head_bias = d_logits.colwise().sum().transpose();
    if (adapters.empty()) return;
    g.pooled.noalias() = d_logits * model.classifier().weight;
    g.pooler_in = (g.pooled.array() * (T(1) - ws.pooled.array().square())).matrix();
    g.cls.noalias() = g.pooler_in * encoder.pooler().weight;
    g.hidden.setZero(ws.batch * ws.length, config.hidden_size);
    for (index b = 0; b < ws.batch; ++b) g.hidden.row(b * ws.length) = g.cls.row(b);
  }
  grads.layers.resize(encoder.layers().size());
  for (std::size_t i = encoder.layers().size(); i-- > 0;) {
    const matrix_t<T>& input = i > 0 ? ws.layers[i - 1].out : ws.embeddings;
    detail::layer_backward(config, encoder.layers()[i], adapters[i], ws, ws.layers[i], input, i > 0, grads.layers[i],
                           g);
  }
}

}  // namespace minilm
