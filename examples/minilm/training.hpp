// SPDX-License-Identifier: Apache-2.0
// Training BERT's classifier: VeRA on every layer's query and value or on all its linear layers
// (on PEFT's projection), LoRA, or every weight (full fine-tuning); the cross-entropy loss and the
// backward pass through the encoder.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <vera/io/model_adapter.hpp>
#include <vera/vera.hpp>

#include "bert.hpp"

namespace minilm {

/// \brief The linear layers of one encoder layer, by PEFT's module names under
///        "bert.encoder.layer.N.": VeRA's "all linear layers" targets.
inline constexpr std::array<const char*, 6> linear_modules = {
    "attention.self.query", "attention.self.key", "attention.self.value",
    "attention.output.dense", "intermediate.dense", "output.dense"};

/// \brief The module path of layer `layer`'s `module` (one of linear_modules).
inline std::string layer_module_path(index layer, const std::string& module) {
  return "bert.encoder.layer." + std::to_string(layer) + "." + module;
}

/// \brief The module path of layer `layer`'s attention.self.`which` ("query", "value") in
///        BertForSequenceClassification: PEFT's names for the adapted layers.
inline std::string attention_path(index layer, const std::string& which) {
  return layer_module_path(layer, "attention.self." + which);
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

/// \brief VeRA on all six linear layers of every encoder layer (linear_modules), as PEFT creates
///        it for those target_modules: one projection sized to the largest in and out (rank x
///        intermediate_size, intermediate_size x rank), which each layer slices to its own in and
///        out (A[:, :in], B[:out, :]); b = 0, d = d_initial.
template <class T>
vera::io::model_adapter<T> all_linear_adapters(const bert_config& config, index rank, std::uint64_t seed,
                                               double d_initial = 0.1) {
  const index h = config.hidden_size, inner = config.intermediate_size;
  vera::io::layer_shapes shapes;
  for (index i = 0; i < config.layers; ++i) {
    for (const char* module : linear_modules) shapes[layer_module_path(i, module)] = {h, h};
    shapes[layer_module_path(i, "intermediate.dense")] = {h, inner};
    shapes[layer_module_path(i, "output.dense")] = {inner, h};
  }
  vera::adapter_options options;
  options.d_initial = d_initial;
  return vera::io::model_adapter<T>::generate(seed, rank, shapes, options);
}

/// \brief Per-layer pointers into `adapters` (made by query_value_adapters or
///        all_linear_adapters: whichever of a layer's linear_modules it adapts) for the forward
///        pass.
template <class T>
std::vector<attention_adapters<T>> attention_adapters_of(const vera::io::model_adapter<T>& adapters,
                                                         index layers) {
  std::vector<attention_adapters<T>> out(static_cast<std::size_t>(layers));
  for (index i = 0; i < layers; ++i) {
    const auto find = [&](const char* module) -> const vera::adapter<T>* {
      const std::string path = layer_module_path(i, module);
      return adapters.contains(path) ? &adapters.at(path) : nullptr;
    };
    attention_adapters<T>& a = out[static_cast<std::size_t>(i)];
    a.query = find("attention.self.query");
    a.key = find("attention.self.key");
    a.value = find("attention.self.value");
    a.attention_output = find("attention.output.dense");
    a.intermediate = find("intermediate.dense");
    a.output = find("output.dense");
  }
  return out;
}

/// \brief dL/dA and dL/dB of a LoRA adapter.
template <class T>
struct lora_gradients {
  matrix_t<T> a, b;
};

/// \brief dL/db and dL/dd of one layer's VeRA adapters, or dL/dA, dL/dB of its LoRA ones.
template <class T>
struct attention_gradients {
  vera::gradients<T> query, value;
  lora_gradients<T> lora_query, lora_value;
  vera::gradients<T> key, attention_output, intermediate, output;
};

/// \brief dL/d of every encoder weight (full fine-tuning), shaped as the weights. The word
///        embeddings' gradient is a dense table allocated once; a backward writes only the rows of
///        the tokens in its batch (listed in word_rows) and clears those of the previous batch
///        first, so a step neither allocates nor sweeps the whole vocabulary.
template <class T>
struct encoder_gradients {
  basic_embedding_weights<T> embeddings;
  std::vector<index> word_rows;       ///< rows of embeddings.word the last backward wrote
  std::vector<std::uint8_t> written;  ///< per vocabulary row: in word_rows
  std::vector<basic_layer_weights<T>> layers;
  basic_linear_weights<T> pooler;

  encoder_gradients() = default;
  /// \brief Zeros shaped as `encoder`'s weights.
  explicit encoder_gradients(const basic_bert_encoder<T>& encoder) {
    const auto zero_norm = [](const basic_norm_weights<T>& w) {
      return basic_norm_weights<T>{vec_t<T>::Zero(w.gamma.size()), vec_t<T>::Zero(w.beta.size())};
    };
    const auto zero_linear = [](const basic_linear_weights<T>& w) {
      return basic_linear_weights<T>{matrix_t<T>::Zero(w.weight.rows(), w.weight.cols()),
                                     vec_t<T>::Zero(w.bias.size())};
    };
    const basic_embedding_weights<T>& e = encoder.embeddings();
    embeddings.word.setZero(e.word.rows(), e.word.cols());
    embeddings.position.setZero(e.position.rows(), e.position.cols());
    embeddings.token_type.setZero(e.token_type.rows(), e.token_type.cols());
    embeddings.norm = zero_norm(e.norm);
    word_rows.reserve(static_cast<std::size_t>(e.word.rows()));
    written.assign(static_cast<std::size_t>(e.word.rows()), 0);
    for (const basic_layer_weights<T>& w : encoder.layers()) {
      layers.push_back({zero_linear(w.query), zero_linear(w.key), zero_linear(w.value),
                        zero_linear(w.attention_output), zero_norm(w.attention_norm), zero_linear(w.intermediate),
                        zero_linear(w.output), zero_norm(w.output_norm)});
    }
    pooler = zero_linear(encoder.pooler());
  }
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
  matrix_t<T> embeddings_sum;           ///< dL/d(word + position + token type) (full fine-tuning)
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

/// \brief dL/dx (tokens x in) = dL/dy W0 (+= with `accumulate`) of a frozen projection, plus
///        VeRA's term and the adapter's gradients when `ad` is set; without dx, only those.
template <class T>
void dense_backward(const matrix_t<T>& dy, const basic_linear_weights<T>& w, const vera::adapter<T>* ad,
                    const vera::forward_context<T>& ctx, vera::gradients<T>& grads, matrix_t<T>* dx, bool accumulate,
                    vera::workspace<T>& scratch) {
  // Into the same buffers every step: an optimizer may hold them.
  if (ad != nullptr) vera::parameter_gradients(dy, *ad, ctx).using_workspace(scratch).eval_to(grads);
  if (dx == nullptr) return;
  if (!accumulate) dx->resize(dy.rows(), w.weight.cols());
  if (ad == nullptr) {
    detail::gemm(*dx, dy, w.weight, accumulate);
  } else if (accumulate) {
    vera::input_gradient(dy, w.weight, *ad, ctx).using_workspace(scratch).add_to(*dx);
  } else {
    vera::input_gradient(dy, w.weight, *ad, ctx).using_workspace(scratch).assign_to(*dx);
  }
}

/// \brief As dense_backward for a frozen projection with LoRA (or, without, nothing):
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

/// \brief dL/dW = dyᵀ x and dL/dbias = column sums of dy of y = x Wᵀ + bias, into buffers
///        already shaped as the weights.
template <class T>
void linear_weight_gradients(const matrix_t<T>& dy, const matrix_t<T>& x, basic_linear_weights<T>& grads) {
  const profile::scope timer(profile::phase::weight_gradients);
  detail::gemm(grads.weight, dy.transpose(), x);
  grads.bias.noalias() = dy.colwise().sum().transpose();
}

/// \brief dL/dgamma and dL/dbeta of y = gamma ⊙ hat + beta from dy.
template <class T>
void norm_weight_gradients(const matrix_t<T>& dy, const matrix_t<T>& hat, basic_norm_weights<T>& grads) {
  const profile::scope timer(profile::phase::weight_gradients);
  grads.gamma.noalias() = (dy.array() * hat.array()).matrix().colwise().sum().transpose();
  grads.beta.noalias() = dy.colwise().sum().transpose();
}

/// \brief Query, key and value backward: the adapters' gradients and, with `dx`, their
///        input-gradient terms added to it (the adapted ones in one sibling group when they form
///        one in the forward); LoRA or frozen projections otherwise.
template <class T>
void qkv_backward(const basic_layer_weights<T>& w, const attention_adapters<T>& ad, const layer_activations<T>& a,
                  const matrix_t<T>& x, matrix_t<T>* dx, attention_gradients<T>& grads, backward_workspace<T>& g) {
  using profile::phase;
  if (ad.query != nullptr && ad.key != nullptr && ad.value != nullptr) {
    const profile::scope timer(phase::qv_backward);
    const auto group = qkv_group(w, ad);
    vera::parameter_gradients(group, a.query_value_context, g.q, g.k, g.v)
        .using_workspace(g.adapter_scratch)
        .eval_to(grads.query, grads.key, grads.value);
    if (dx != nullptr)
      vera::input_gradient(group, a.query_value_context, g.q, g.k, g.v).using_workspace(g.adapter_scratch).add_to(*dx);
    return;
  }
  {
    const profile::scope timer(phase::k_backward);
    dense_backward(g.k, w.key, ad.key, a.key_context, grads.key, dx, /*accumulate=*/true, g.adapter_scratch);
  }
  const profile::scope timer(phase::qv_backward);
  if (ad.query != nullptr && ad.value != nullptr) {
    const auto group = qv_group(w, ad);
    vera::parameter_gradients(group, a.query_value_context, g.q, g.v)
        .using_workspace(g.adapter_scratch)
        .eval_to(grads.query, grads.value);
    // Both adapters' input-gradient terms meet in one product.
    if (dx != nullptr)
      vera::input_gradient(group, a.query_value_context, g.q, g.v).using_workspace(g.adapter_scratch).add_to(*dx);
    return;
  }
  if (ad.query != nullptr) {
    dense_backward(g.q, w.query, ad.query, a.query_context, grads.query, dx, true, g.adapter_scratch);
  } else {
    lora_backward(g.q, w.query, ad.lora_query, a.lora_query_p, x, grads.lora_query, dx, g.lora_p);
  }
  if (ad.value != nullptr) {
    dense_backward(g.v, w.value, ad.value, a.value_context, grads.value, dx, true, g.adapter_scratch);
  } else {
    lora_backward(g.v, w.value, ad.lora_value, a.lora_value_p, x, grads.lora_value, dx, g.lora_p);
  }
}

/// \brief One encoder layer backward: g.hidden holds dL/d(layer output) and, when
///        `input_needed`, becomes dL/d(layer input). With `weights` (full fine-tuning, after a
///        pass::train_weights forward) every weight's gradient is written there too.
template <class T>
void layer_backward(const bert_config& config, const basic_layer_weights<T>& w, const attention_adapters<T>& ad,
                    const basic_bert_workspace<T>& ws, const layer_activations<T>& a, const matrix_t<T>& x,
                    bool input_needed, attention_gradients<T>& grads, basic_layer_weights<T>* weights,
                    backward_workspace<T>& g) {
  using profile::phase;
  if (weights != nullptr) norm_weight_gradients(g.hidden, a.output_hat, weights->output_norm);
  {
    const profile::scope timer(phase::layer_norm_backward);
    layer_norm_backward(g.hidden, a.output_hat, a.output_rstd, w.output_norm.gamma, g.row, g.row2, g.output_sum);
  }
  if (weights != nullptr) linear_weight_gradients(g.output_sum, a.intermediate_out, weights->output);
  {
    const profile::scope timer(phase::ffn_backward);
    dense_backward(g.output_sum, w.output, ad.output, a.output_context, grads.output, &g.intermediate,
                   /*accumulate=*/false, g.adapter_scratch);
  }
  {
    const profile::scope timer(phase::gelu_backward);
    gelu_backward(a.intermediate_in, g.intermediate);
  }
  if (weights != nullptr) linear_weight_gradients(g.intermediate, a.attention_out, weights->intermediate);
  {
    const profile::scope timer(phase::ffn_backward);
    g.attention_out = g.output_sum;  // the residual around the feed-forward block
    dense_backward(g.intermediate, w.intermediate, ad.intermediate, a.intermediate_context, grads.intermediate,
                   &g.attention_out, /*accumulate=*/true, g.adapter_scratch);
  }
  if (weights != nullptr) norm_weight_gradients(g.attention_out, a.attention_hat, weights->attention_norm);
  {
    const profile::scope timer(phase::layer_norm_backward);
    layer_norm_backward(g.attention_out, a.attention_hat, a.attention_rstd, w.attention_norm.gamma, g.row,
                        g.row2, g.attention_sum);
  }
  if (weights != nullptr) linear_weight_gradients(g.attention_sum, a.context, weights->attention_output);
  {
    const profile::scope timer(phase::attention_output_backward);
    dense_backward(g.attention_sum, w.attention_output, ad.attention_output, a.attention_output_context,
                   grads.attention_output, &g.context, /*accumulate=*/false, g.adapter_scratch);
  }
  attention_backward(config, ws, a, g);
  if (weights != nullptr) {
    linear_weight_gradients(g.q, x, weights->query);
    linear_weight_gradients(g.k, x, weights->key);
    linear_weight_gradients(g.v, x, weights->value);
  }
  matrix_t<T>* dx = nullptr;
  if (input_needed) {
    g.hidden = g.attention_sum;  // the residual around attention
    dx = &g.hidden;
  }
  qkv_backward(w, ad, a, x, dx, grads, g);
}

/// \brief The embeddings' gradients from g.hidden = dL/d(embedding LayerNorm output): LayerNorm
///        gain and shift, then the sum's gradient scattered into the rows each token looked up.
///        Padding tokens are skipped: nothing reads their outputs, so their gradient is zero (and
///        BERT's padding row is never trained, as nn.Embedding's padding_idx keeps it).
template <class T>
void embeddings_backward(const basic_bert_encoder<T>& encoder, const token_batch& tokens,
                         const basic_bert_workspace<T>& ws, encoder_gradients<T>& grads, backward_workspace<T>& g) {
  basic_embedding_weights<T>& e = grads.embeddings;
  norm_weight_gradients(g.hidden, ws.embeddings_hat, e.norm);
  const profile::scope timer(profile::phase::weight_gradients);
  layer_norm_backward(g.hidden, ws.embeddings_hat, ws.embeddings_rstd, encoder.embeddings().norm.gamma, g.row, g.row2,
                      g.embeddings_sum);
  for (const index row : grads.word_rows) {
    e.word.row(row).setZero();
    grads.written[static_cast<std::size_t>(row)] = 0;
  }
  grads.word_rows.clear();
  e.position.setZero();  // max positions x hidden and two token types: small next to a step
  e.token_type.setZero();
  for (index b = 0; b < ws.batch; ++b) {
    for (index t = 0; t < ws.length; ++t) {
      const index r = b * ws.length + t;
      const auto cell = static_cast<std::size_t>(r);
      if (tokens.mask[cell] == 0) continue;
      const index id = tokens.ids[cell];
      if (grads.written[static_cast<std::size_t>(id)] == 0) {
        grads.written[static_cast<std::size_t>(id)] = 1;
        grads.word_rows.push_back(id);  // capacity reserved for the whole vocabulary
      }
      e.word.row(id) += g.embeddings_sum.row(r);
      e.position.row(t) += g.embeddings_sum.row(r);
      e.token_type.row(tokens.type_ids[cell]) += g.embeddings_sum.row(r);
    }
  }
}

/// \brief The head's gradients and, unless only the head is trained, dL/d of every [CLS] row in
///        g.hidden (the pooler's gradients too with `pooler`). Returns whether the pass goes on.
template <class T>
bool head_backward(const basic_bert_classifier<T>& model, const basic_bert_workspace<T>& ws,
                   const matrix_t<T>& d_logits, bool encoder_needed, classifier_gradients<T>& grads,
                   basic_linear_weights<T>* pooler, backward_workspace<T>& g) {
  const auto& encoder = model.encoder();
  {
    const profile::scope timer(profile::phase::head_backward);
    grads.head_weight.noalias() = d_logits.transpose() * ws.pooled;
    grads.head_bias = d_logits.colwise().sum().transpose();
    if (!encoder_needed) return false;
    g.pooled.noalias() = d_logits * model.classifier().weight;
    g.pooler_in = (g.pooled.array() * (T(1) - ws.pooled.array().square())).matrix();
  }
  if (pooler != nullptr) linear_weight_gradients(g.pooler_in, ws.cls, *pooler);
  const profile::scope timer(profile::phase::head_backward);
  g.cls.noalias() = g.pooler_in * encoder.pooler().weight;
  g.hidden.setZero(ws.batch * ws.length, encoder.config().hidden_size);
  for (index b = 0; b < ws.batch; ++b) g.hidden.row(b * ws.length) = g.cls.row(b);
  return true;
}

}  // namespace detail

/// \brief Gradients of the loss behind `d_logits` (batch x labels) for the classifier head and,
///        when `adapters` is not empty, every adapter, after model.forward(tokens, ws, adapters,
///        pass::train) filled `ws`. Frozen weights get no gradient; the pass goes through them
///        down to the first layer's projections (never into the embeddings).
template <class T>
void backward(const basic_bert_classifier<T>& model, const std::vector<attention_adapters<T>>& adapters,
              const basic_bert_workspace<T>& ws, const matrix_t<T>& d_logits, classifier_gradients<T>& grads,
              backward_workspace<T>& g) {
  if (!detail::head_backward(model, ws, d_logits, !adapters.empty(), grads,
                             static_cast<basic_linear_weights<T>*>(nullptr), g))
    return;
  const auto& layers = model.encoder().layers();
  grads.layers.resize(layers.size());
  for (std::size_t i = layers.size(); i-- > 0;) {
    const matrix_t<T>& input = i > 0 ? ws.layers[i - 1].out : ws.embeddings;
    detail::layer_backward(model.encoder().config(), layers[i], adapters[i], ws, ws.layers[i], input, i > 0,
                           grads.layers[i], static_cast<basic_layer_weights<T>*>(nullptr), g);
  }
}

/// \brief Full fine-tuning: the head's gradients into `grads` and every encoder weight's (the
///        embedding tables, every LayerNorm, linear layer and the pooler) into `weights`, after
///        model.forward(tokens, ws, {}, pass::train_weights) filled `ws`.
/// \throws vera::value_error when `weights` is not shaped for the model (encoder_gradients(encoder)).
template <class T>
void backward_full(const basic_bert_classifier<T>& model, const token_batch& tokens, const basic_bert_workspace<T>& ws,
                   const matrix_t<T>& d_logits, classifier_gradients<T>& grads, encoder_gradients<T>& weights,
                   backward_workspace<T>& g) {
  const auto& encoder = model.encoder();
  const auto& layers = encoder.layers();
  if (weights.layers.size() != layers.size() || weights.written.size() != static_cast<std::size_t>(encoder.config().vocab_size))
    throw vera::value_error("backward_full: the weight gradients are not shaped for this model");
  detail::head_backward(model, ws, d_logits, true, grads, &weights.pooler, g);
  grads.layers.resize(layers.size());
  const attention_adapters<T> none{};
  for (std::size_t i = layers.size(); i-- > 0;) {
    const matrix_t<T>& input = i > 0 ? ws.layers[i - 1].out : ws.embeddings;
    detail::layer_backward(encoder.config(), layers[i], none, ws, ws.layers[i], input, true, grads.layers[i],
                           &weights.layers[i], g);
  }
  detail::embeddings_backward(encoder, tokens, ws, weights, g);
}

}  // namespace minilm
