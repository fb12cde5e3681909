// SPDX-License-Identifier: Apache-2.0
// BERT's encoder, pooler and sequence-classification head over Eigen (float32 for the programs,
// double for gradient checks), as transformers computes BertForSequenceClassification at
// evaluation (no dropout), optionally with VeRA adapters on the attention's query and value.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include <Eigen/Core>
#include <nlohmann/json.hpp>
#include <unsupported/Eigen/SpecialFunctions>
#include <vera/core/error.hpp>
#include <vera/io/error.hpp>
#include <vera/io/file.hpp>
#include <vera/io/matrix.hpp>
#include <vera/io/safetensors.hpp>
#include <vera/multi.hpp>
#include <vera/vera.hpp>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "profile.hpp"
#include "tokenizer.hpp"

namespace minilm {

template <class T>
using matrix_t = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;  // column-major, as vera::linear stores W0
template <class T>
using vec_t = Eigen::Matrix<T, Eigen::Dynamic, 1>;
/// Row-major, for attention probabilities: each row's softmax runs over contiguous memory.
template <class T>
using row_matrix_t = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using matrix = matrix_t<float>;
using vec = vec_t<float>;
using index = Eigen::Index;

/// \brief The fields of a BERT config.json that the forward pass depends on.
struct bert_config {
  index vocab_size = 0;
  index hidden_size = 0;
  index layers = 0;
  index heads = 0;
  index intermediate_size = 0;
  index max_positions = 0;
  index type_vocab_size = 0;
  index num_labels = 2;
  float layer_norm_eps = 1e-12f;

  index head_size() const noexcept { return hidden_size / heads; }

  /// \brief Reads and checks config.json.
  /// \throws vera::io_error when it cannot be read; vera::format_error naming the file when it is
  ///         not BERT with GELU (erf) and absolute positions, or its sizes do not fit together.
  static bert_config from_file(const std::filesystem::path& path) {
    const std::string source = path.string();
    const auto fail = [&](const std::string& what) { throw vera::format_error(source + ": " + what); };
    const nlohmann::json j =
        nlohmann::json::parse(vera::io::read_text_file(path, std::size_t{1} << 20), nullptr, false);
    if (j.is_discarded()) fail("not valid JSON");
    bert_config c;
    try {
      if (j.value("model_type", std::string("bert")) != "bert") fail("model_type is not bert");
      if (j.value("hidden_act", std::string("gelu")) != "gelu")
        fail("hidden_act " + j.at("hidden_act").dump() + " is not gelu");
      if (j.value("position_embedding_type", std::string("absolute")) != "absolute")
        fail("position_embedding_type is not absolute");
      c.vocab_size = j.at("vocab_size").get<index>();
      c.hidden_size = j.at("hidden_size").get<index>();
      c.layers = j.at("num_hidden_layers").get<index>();
      c.heads = j.at("num_attention_heads").get<index>();
      c.intermediate_size = j.at("intermediate_size").get<index>();
      c.max_positions = j.at("max_position_embeddings").get<index>();
      c.type_vocab_size = j.value("type_vocab_size", index{2});
      c.layer_norm_eps = j.value("layer_norm_eps", 1e-12f);
      // transformers sizes the head from id2label when present, else from num_labels.
      if (j.contains("id2label")) {
        c.num_labels = static_cast<index>(j.at("id2label").size());
      } else {
        c.num_labels = j.value("num_labels", index{2});
      }
    } catch (const nlohmann::json::exception& e) {
      fail(std::string("unexpected structure: ") + e.what());
    }
    if (c.vocab_size <= 0 || c.hidden_size <= 0 || c.layers < 0 || c.heads <= 0 ||
        c.intermediate_size <= 0 || c.max_positions <= 0 || c.type_vocab_size <= 0 || c.num_labels <= 0)
      fail("a size is not positive");
    if (c.hidden_size % c.heads != 0)
      fail("hidden_size " + std::to_string(c.hidden_size) + " is not a multiple of num_attention_heads " +
           std::to_string(c.heads));
    return c;
  }
};

namespace detail {

/// \brief Threads that loops over sequences and heads may use: OpenMP's team size when the
///        program is built with OpenMP, else 1.
inline int loop_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

/// \brief f(i) for i in [0, count), split between OpenMP threads when there are several (a team
///        of one would still cost the runtime an allocation per region).
template <class F>
void parallel_for(index count, F&& f) {
#ifdef _OPENMP
  if (omp_get_max_threads() > 1) {
#pragma omp parallel for schedule(static)
    for (index i = 0; i < count; ++i) f(i);
    return;
  }
#endif
  for (index i = 0; i < count; ++i) f(i);
}

/// \brief The calling thread's number in such a loop (0 outside one).
inline int loop_thread() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

/// \brief dst = lhs rhs, or dst += lhs rhs with `accumulate`, through vera's GEMM entry point, so
///        that the model's own products run in the same kernel as the adapters' (oneDNN when
///        built with vera::onednn, Eigen otherwise). dst must already have its shape.
template <class Dst, class Lhs, class Rhs>
void gemm(Dst&& dst, const Lhs& lhs, const Rhs& rhs, bool accumulate = false) {
  vera::gemm(std::forward<Dst>(dst), lhs, rhs, accumulate);
}

}  // namespace detail

/// \brief A linear layer's weight (out x in, nn.Linear's layout) and bias: the W0 and bias that
///        vera::forward and vera::linear take, so a layer can later be adapted without copying.
template <class T>
struct basic_linear_weights {
  matrix_t<T> weight;
  vec_t<T> bias;

  /// \brief y (n x out) = x (n x in) Wᵀ + b, into a y that keeps its storage between calls.
  template <class XD>
  void forward(const Eigen::MatrixBase<XD>& x, matrix_t<T>& y) const {
    y.resize(x.rows(), weight.rows());
    detail::gemm(y, x.derived(), weight.transpose());
    y.rowwise() += bias.transpose();
  }
};
using linear_weights = basic_linear_weights<float>;

/// \brief LayerNorm's gain and shift.
template <class T>
struct basic_norm_weights {
  vec_t<T> gamma;
  vec_t<T> beta;
};

/// \brief The embedding tables (row-major: a token's embedding is contiguous) and their LayerNorm.
template <class T>
struct basic_embedding_weights {
  vera::row_matrix<T> word;        ///< vocabulary x hidden
  vera::row_matrix<T> position;    ///< max positions x hidden
  vera::row_matrix<T> token_type;  ///< token types x hidden
  basic_norm_weights<T> norm;
};

/// \brief One encoder layer's weights, named after transformers' BertLayer modules.
template <class T>
struct basic_layer_weights {
  basic_linear_weights<T> query, key, value;
  basic_linear_weights<T> attention_output;  ///< attention.output.dense
  basic_norm_weights<T> attention_norm;      ///< attention.output.LayerNorm
  basic_linear_weights<T> intermediate;      ///< intermediate.dense
  basic_linear_weights<T> output;            ///< output.dense
  basic_norm_weights<T> output_norm;         ///< output.LayerNorm
};

/// \brief LoRA on one projection (PEFT's lora_A, lora_B): Y = X W0ᵀ + bias + scale (X Aᵀ) Bᵀ.
template <class T>
struct lora_adapter {
  matrix_t<T> a;  ///< rank x in
  matrix_t<T> b;  ///< out x rank
  T scale = 1;    ///< lora_alpha / rank
};

/// \brief Adapters on one layer's linear projections: VeRA on any of them, or LoRA on query and
///        value (not both on one projection); null runs the frozen projection. Not owned: they
///        must outlive every pass that uses them.
template <class T>
struct attention_adapters {
  const vera::adapter<T>* query = nullptr;
  const vera::adapter<T>* value = nullptr;
  const lora_adapter<T>* lora_query = nullptr;
  const lora_adapter<T>* lora_value = nullptr;
  const vera::adapter<T>* key = nullptr;
  const vera::adapter<T>* attention_output = nullptr;  ///< attention.output.dense
  const vera::adapter<T>* intermediate = nullptr;      ///< intermediate.dense
  const vera::adapter<T>* output = nullptr;            ///< output.dense
};

/// \brief Query, key and value as one vera sibling group (all three adapted): the group the
///        forward and the backward both run.
template <class T>
auto qkv_group(const basic_layer_weights<T>& w, const attention_adapters<T>& ad) {
  return vera::siblings(vera::sibling(w.query.weight, w.query.bias, *ad.query),
                        vera::sibling(w.key.weight, w.key.bias, *ad.key),
                        vera::sibling(w.value.weight, w.value.bias, *ad.value));
}

/// \brief Query and value as one vera sibling group (both adapted, key frozen).
template <class T>
auto qv_group(const basic_layer_weights<T>& w, const attention_adapters<T>& ad) {
  return vera::siblings(vera::sibling(w.query.weight, w.query.bias, *ad.query),
                        vera::sibling(w.value.weight, w.value.bias, *ad.value));
}

/// \brief What a forward pass keeps for a backward: nothing (evaluate), what the adapters' and
///        the layers' input gradients need (train), and with it every linear layer's input, for
///        the gradients of the weights themselves (train_weights: full fine-tuning).
enum class pass { evaluate, train, train_weights };

/// \brief Whether `mode` keeps anything for a backward.
constexpr bool training(pass mode) noexcept { return mode != pass::evaluate; }

/// \brief What one encoder layer computes that the backward pass needs (or that the next layer
///        reads), kept between steps: the storage is reused when the batch shape repeats. Rows are
///        tokens: row b * length + t is token t of sequence b.
template <class T>
struct layer_activations {
  matrix_t<T> q, k, v;              ///< tokens x hidden
  row_matrix_t<T> probabilities;    ///< (batch * heads * length) x length: softmax of each head
  matrix_t<T> attention_hat;        ///< attention.output.dense(context) + input, normalized, before gain and shift
  vec_t<T> attention_rstd;          ///< 1 / sqrt(var + eps) of each of those rows
  matrix_t<T> intermediate_in;      ///< intermediate.dense(attention output), before GELU
  matrix_t<T> output_hat;
  vec_t<T> output_rstd;
  matrix_t<T> out;                  ///< the layer's output
  /// What an adapted projection keeps for its backward (filled by pass::train) when it is not in
  /// a sibling group.
  vera::forward_context<T> query_context, key_context, value_context;
  vera::forward_context<T> attention_output_context, intermediate_context, output_context;
  /// With query and value (and key) adapted, as one vera sibling group: X Aᵀ, computed once for
  /// all of them, kept.
  vera::forward_context<T> query_value_context;
  /// The inputs of attention.output.dense, intermediate.dense and output.dense (pass::train_weights
  /// only; the other passes leave them empty and use the shared layer_scratch).
  matrix_t<T> context, attention_out, intermediate_out;
  /// X Aᵀ of LoRA on query and value (tokens x rank).
  matrix_t<T> lora_query_p, lora_value_p;
};

/// \brief What a layer computes on the way and no backward needs (the base weights are frozen):
///        one set, shared by every layer.
template <class T>
struct layer_scratch {
  matrix_t<T> context;              ///< tokens x hidden: heads' outputs side by side
  matrix_t<T> attention_sum;        ///< attention.output.dense(context) + layer input
  matrix_t<T> attention_out;        ///< LayerNorm(attention_sum)
  matrix_t<T> intermediate_out;     ///< GELU(intermediate_in)
  matrix_t<T> output_sum;           ///< output.dense(intermediate_out) + attention_out
};

/// \brief Reusable buffers of a whole forward pass. A training pass keeps one layer_activations
///        per layer for the backward; an evaluation pass needs two, used in turn.
template <class T>
struct basic_bert_workspace {
  matrix_t<T> embeddings_sum;       ///< word + position + token type, before LayerNorm
  matrix_t<T> embeddings_hat;
  vec_t<T> embeddings_rstd;
  matrix_t<T> embeddings;           ///< the first layer's input
  std::vector<T> key_bias;          ///< batch x length: 0 for a real token, lowest value for padding
  std::vector<layer_activations<T>> layers;
  layer_scratch<T> scratch;
  matrix_t<T> cls;                  ///< batch x hidden: the last hidden state of each [CLS]
  matrix_t<T> pooler_in;            ///< pooler.dense(cls), before tanh
  matrix_t<T> pooled;               ///< batch x hidden
  matrix_t<T> logits;               ///< batch x num_labels
  vera::workspace<T> adapter_scratch;  ///< vera's scratch for the adapted projections
  index batch = 0, length = 0;
  const matrix_t<T>* last = nullptr;  ///< the last layer's output (or the embeddings)

  /// \brief The last layer's output (tokens x hidden), or the embeddings without layers, of the
  ///        latest forward pass.
  const matrix_t<T>& last_hidden_state() const { return last != nullptr ? *last : embeddings; }
};
using bert_workspace = basic_bert_workspace<float>;

namespace detail {

/// \brief y = gamma ⊙ (x - mean) / sqrt(var + eps) + beta per row (biased variance, as
///        torch.nn.LayerNorm), keeping the normalized rows and their 1/std.
template <class T>
void layer_norm(const matrix_t<T>& x, const basic_norm_weights<T>& w, T eps, matrix_t<T>& hat, vec_t<T>& rstd,
                matrix_t<T>& y) {
  const T inv_width = T(1) / static_cast<T>(x.cols());
  rstd.noalias() = x.rowwise().sum() * inv_width;  // the mean, until overwritten below
  hat.noalias() = x.colwise() - rstd;
  rstd = ((hat.array().square().rowwise().sum() * inv_width) + eps).rsqrt().matrix();
  hat.array().colwise() *= rstd.array();
  y.noalias() = ((hat.array().rowwise() * w.gamma.transpose().array()).rowwise() + w.beta.transpose().array()).matrix();
}

/// \brief GELU with the exact erf form that transformers' "gelu" uses (Eigen's vectorized erf
///        for float, as PyTorch's vectorized kernel; std::erf for double).
template <class T>
void gelu(const matrix_t<T>& x, matrix_t<T>& y) {
  y.resize(x.rows(), x.cols());
  const T inv_sqrt2 = T(0.70710678118654752440);
  // Column blocks split between threads: coefficient-wise work that Eigen runs on one.
  const index cols = x.cols(), threads = loop_threads();
  parallel_for(threads, [&](index t) {
    const index first = cols * t / threads, width = cols * (t + 1) / threads - first;
    const auto in = x.middleCols(first, width).array();
    y.middleCols(first, width).array() = T(0.5) * in * (T(1) + (in * inv_sqrt2).erf());
  });
}

/// \brief Softmax of every row of `s` in place, of scale * s + key_bias (`key_bias`: one entry per
///        column); each row is contiguous, and the pass over it runs in one vectorized loop.
template <class T>
void masked_softmax_rows(Eigen::Ref<row_matrix_t<T>> s, const T* key_bias, T scale) {
  const Eigen::Map<const Eigen::Array<T, 1, Eigen::Dynamic>> bias(key_bias, s.cols());
  for (index r = 0; r < s.rows(); ++r) {
    auto row = s.row(r).array();
    row = row * scale + bias;
    const T top = row.maxCoeff();
    row = (row - top).exp();
    row *= T(1) / row.sum();
  }
}

/// \brief load() with the command that fetches the model appended to an io_error or
///        format_error: a missing or damaged download is the usual cause.
template <class F>
auto with_fetch_hint(const std::filesystem::path& dir, F&& load) -> decltype(load()) {
  const std::string hint = " (scripts/fetch-minilm.sh " + dir.string() +
                           " downloads and checks all-MiniLM-L6-v2 there)";
  try {
    return load();
  } catch (const vera::io_error& e) {
    throw vera::io_error(e.what() + hint);
  } catch (const vera::format_error& e) {
    throw vera::format_error(e.what() + hint);
  }
}

}  // namespace detail

/// \brief BERT's embeddings, encoder layers and pooler, with weights read from safetensors.
template <class T>
class basic_bert_encoder {
 public:
  /// \brief Reads every tensor the forward pass needs from `file`, under `prefix` ("" for a
  ///        BertModel checkpoint, "bert." for BertForSequenceClassification).
  /// \throws vera::format_error naming the file and tensor when one is missing or misshapen.
  basic_bert_encoder(const bert_config& config, const vera::io::safetensors_view& file, const std::string& prefix)
      : config_(config) {
    const index h = config.hidden_size, inner = config.intermediate_size;
    const std::string e = prefix + "embeddings.";
    embeddings_.word = read_row_major(file, e + "word_embeddings.weight", config.vocab_size, h);
    embeddings_.position = read_row_major(file, e + "position_embeddings.weight", config.max_positions, h);
    embeddings_.token_type = read_row_major(file, e + "token_type_embeddings.weight", config.type_vocab_size, h);
    embeddings_.norm = read_norm(file, e + "LayerNorm.", h);
    layers_.resize(static_cast<std::size_t>(config.layers));
    for (index i = 0; i < config.layers; ++i) {
      const std::string l = prefix + "encoder.layer." + std::to_string(i) + ".";
      basic_layer_weights<T>& w = layers_[static_cast<std::size_t>(i)];
      w.query = read_linear(file, l + "attention.self.query.", h, h);
      w.key = read_linear(file, l + "attention.self.key.", h, h);
      w.value = read_linear(file, l + "attention.self.value.", h, h);
      w.attention_output = read_linear(file, l + "attention.output.dense.", h, h);
      w.attention_norm = read_norm(file, l + "attention.output.LayerNorm.", h);
      w.intermediate = read_linear(file, l + "intermediate.dense.", h, inner);
      w.output = read_linear(file, l + "output.dense.", inner, h);
      w.output_norm = read_norm(file, l + "output.LayerNorm.", h);
    }
    pooler_ = read_linear(file, prefix + "pooler.dense.", h, h);
  }

  const bert_config& config() const noexcept { return config_; }
  const std::vector<basic_layer_weights<T>>& layers() const noexcept { return layers_; }
  /// \brief The layers' weights, writable (to adapt or merge them).
  std::vector<basic_layer_weights<T>>& layers() noexcept { return layers_; }
  const basic_linear_weights<T>& pooler() const noexcept { return pooler_; }
  /// \brief The pooler, writable (to train it).
  basic_linear_weights<T>& pooler() noexcept { return pooler_; }
  const basic_embedding_weights<T>& embeddings() const noexcept { return embeddings_; }
  /// \brief The embedding tables and their LayerNorm, writable (to train them).
  basic_embedding_weights<T>& embeddings() noexcept { return embeddings_; }

  /// \brief Runs embeddings, every layer and the pooler on `tokens` into `ws`; the result is
  ///        ws.last_hidden_state() and ws.pooled (batch x hidden).
  /// \throws vera::value_error (before computing anything) for a token id, token type or length
  ///         the model has no embedding for, or arrays whose size is not batch x length.
  void forward(const token_batch& tokens, basic_bert_workspace<T>& ws) const {
    forward(tokens, ws, {}, pass::evaluate);
  }

  /// \brief As above with adapters (attention_adapters): `adapters` is empty (none) or holds one
  ///        entry per layer. pass::train keeps each adapted layer's context in `ws` for the
  ///        backward (training.hpp); pass::train_weights also every linear layer's input.
  /// \throws vera::value_error as above, or when `adapters` has another number of layers.
  void forward(const token_batch& tokens, basic_bert_workspace<T>& ws,
               const std::vector<attention_adapters<T>>& adapters, pass mode) const {
    check(tokens);
    if (!adapters.empty() && adapters.size() != layers_.size())
      throw vera::value_error("bert: " + std::to_string(adapters.size()) + " layers of adapters for " +
                              std::to_string(layers_.size()) + " layers");
    ws.batch = static_cast<index>(tokens.batch);
    ws.length = static_cast<index>(tokens.length);
    {
      const profile::scope timer(profile::phase::embeddings);
      embed(tokens, ws);
    }
    ws.key_bias.resize(tokens.mask.size());
    // transformers adds the lowest value to the scores of padded keys: they get probability 0,
    // and a row without any real key degrades to a uniform average instead of NaN.
    std::transform(tokens.mask.begin(), tokens.mask.end(), ws.key_bias.begin(),
                   [](std::int32_t m) { return m != 0 ? T(0) : std::numeric_limits<T>::lowest(); });
    // Training keeps every layer's activations for the backward; evaluation only needs the
    // previous layer's output, so two sets take turns.
    const std::size_t kept = training(mode) ? layers_.size() : std::min<std::size_t>(2, layers_.size());
    if (ws.layers.size() < kept) ws.layers.resize(kept);
    const matrix_t<T>* input = &ws.embeddings;
    for (std::size_t i = 0; i < layers_.size(); ++i) {
      layer_activations<T>& a = ws.layers[training(mode) ? i : i % 2];
      layer_forward(layers_[i], adapters.empty() ? attention_adapters<T>{} : adapters[i], mode, *input, ws, a);
      input = &a.out;
    }
    ws.last = input;
    const profile::scope timer(profile::phase::pooler_head);
    ws.cls.resize(ws.batch, config_.hidden_size);
    for (index b = 0; b < ws.batch; ++b) ws.cls.row(b) = input->row(b * ws.length);
    pooler_.forward(ws.cls, ws.pooler_in);
    ws.pooled = ws.pooler_in.array().tanh().matrix();
  }

 private:
  using row_matrix = vera::row_matrix<T>;

  static void require_shape(const vera::io::safetensors_view& file, const vera::io::tensor_info& info,
                            const std::vector<std::uint64_t>& shape) {
    if (info.shape != shape)
      throw vera::format_error(file.source() + ": tensor '" + info.name + "' has shape " +
                               vera::io::shape_string(info.shape) + ", expected " +
                               vera::io::shape_string(shape) + " from config.json");
  }

  static row_matrix read_row_major(const vera::io::safetensors_view& file, const std::string& name, index rows,
                                   index cols) {
    const auto& info = file.at(name);
    require_shape(file, info, {static_cast<std::uint64_t>(rows), static_cast<std::uint64_t>(cols)});
    return vera::io::read_matrix<T>(file, info);
  }

  static vec_t<T> read_vec(const vera::io::safetensors_view& file, const std::string& name, index size) {
    const auto& info = file.at(name);
    require_shape(file, info, {static_cast<std::uint64_t>(size)});
    return vera::io::read_vector<T>(file, info);
  }

  static basic_linear_weights<T> read_linear(const vera::io::safetensors_view& file, const std::string& prefix,
                                             index in, index out) {
    return {read_row_major(file, prefix + "weight", out, in), read_vec(file, prefix + "bias", out)};
  }

  static basic_norm_weights<T> read_norm(const vera::io::safetensors_view& file, const std::string& prefix,
                                         index size) {
    return {read_vec(file, prefix + "weight", size), read_vec(file, prefix + "bias", size)};
  }

  void check(const token_batch& tokens) const {
    const std::size_t cells = tokens.batch * tokens.length;
    if (tokens.ids.size() != cells || tokens.type_ids.size() != cells || tokens.mask.size() != cells)
      throw vera::value_error("bert: ids, type_ids and mask must each hold batch x length = " +
                              std::to_string(cells) + " entries");
    if (static_cast<index>(tokens.length) > config_.max_positions)
      throw vera::value_error("bert: sequence length " + std::to_string(tokens.length) +
                              " exceeds max_position_embeddings " + std::to_string(config_.max_positions));
    const auto out_of_range = [](const std::vector<std::int32_t>& v, index limit) {
      return std::find_if(v.begin(), v.end(), [&](std::int32_t x) { return x < 0 || x >= limit; });
    };
    if (const auto it = out_of_range(tokens.ids, config_.vocab_size); it != tokens.ids.end())
      throw vera::value_error("bert: token id " + std::to_string(*it) + " outside the vocabulary of " +
                              std::to_string(config_.vocab_size));
    if (const auto it = out_of_range(tokens.type_ids, config_.type_vocab_size); it != tokens.type_ids.end())
      throw vera::value_error("bert: token type " + std::to_string(*it) + " outside type_vocab_size " +
                              std::to_string(config_.type_vocab_size));
  }

  void embed(const token_batch& tokens, basic_bert_workspace<T>& ws) const {
    const index n = ws.batch * ws.length;
    ws.embeddings_sum.resize(n, config_.hidden_size);
    for (index b = 0; b < ws.batch; ++b) {
      for (index t = 0; t < ws.length; ++t) {
        const index r = b * ws.length + t;
        const auto cell = static_cast<std::size_t>(r);
        // transformers' order: (word + token type) + position.
        ws.embeddings_sum.row(r) = (embeddings_.word.row(tokens.ids[cell]) +
                                    embeddings_.token_type.row(tokens.type_ids[cell])) +
                                   embeddings_.position.row(t);
      }
    }
    detail::layer_norm(ws.embeddings_sum, embeddings_.norm, static_cast<T>(config_.layer_norm_eps), ws.embeddings_hat,
                       ws.embeddings_rstd, ws.embeddings);
  }

  // Scaled dot-product attention of every sequence and head, from a.q, a.k, a.v, into `context`.
  void attention(basic_bert_workspace<T>& ws, layer_activations<T>& a, matrix_t<T>& context) const {
    const index length = ws.length, heads = config_.heads, d = config_.head_size();
    const T scale = T(1) / std::sqrt(static_cast<T>(d));
    a.probabilities.resize(ws.batch * heads * length, length);
    context.resize(ws.batch * length, config_.hidden_size);
    // Each (sequence, head) is independent; the products are small (length x head size), so
    // Eigen's own kernel runs them (no provider call per head), and threads split the heads.
    detail::parallel_for(ws.batch * heads, [&](index pair) {
      const index b = pair / heads, h = pair % heads;
      const T* key_bias = ws.key_bias.data() + b * length;
      auto p = a.probabilities.middleRows(pair * length, length);
      const auto q = a.q.block(b * length, h * d, length, d);
      const auto k = a.k.block(b * length, h * d, length, d);
      const auto v = a.v.block(b * length, h * d, length, d);
      {
        const profile::scope timer(profile::phase::attention_gemm);
        p.noalias() = q * k.transpose();
      }
      {
        const profile::scope timer(profile::phase::softmax);
        detail::masked_softmax_rows<T>(p, key_bias, scale);
      }
      const profile::scope timer(profile::phase::attention_gemm);
      context.block(b * length, h * d, length, d).noalias() = p * v;
    });
  }

  // Y = X Wᵀ + bias, plus the VeRA term when `ad` is set (saving its context when training).
  static void project(const basic_linear_weights<T>& w, const vera::adapter<T>* ad, pass mode, const matrix_t<T>& x,
                      matrix_t<T>& y, vera::forward_context<T>& ctx, vera::workspace<T>& scratch) {
    if (ad == nullptr) {
      w.forward(x, y);
    } else if (training(mode)) {
      y = vera::forward(x, w.weight, w.bias, *ad).train(ctx).using_workspace(scratch);
    } else {
      y = vera::forward(x, w.weight, w.bias, *ad).using_workspace(scratch);
    }
  }

  // As above, or with LoRA (X Aᵀ kept in lora_p) when `lora` is set instead of `ad`.
  static void project(const basic_linear_weights<T>& w, const vera::adapter<T>* ad, const lora_adapter<T>* lora,
                      pass mode, const matrix_t<T>& x, matrix_t<T>& y, vera::forward_context<T>& ctx,
                      matrix_t<T>& lora_p, vera::workspace<T>& scratch) {
    project(w, ad, mode, x, y, ctx, scratch);
    if (ad != nullptr || lora == nullptr) return;
    lora_p.resize(x.rows(), lora->a.rows());
    detail::gemm(lora_p, x, lora->a.transpose());
    y.noalias() += (lora_p * lora->b.transpose()) * lora->scale;
  }

  // Query, key and value: the adapted ones that read the same input as one sibling group.
  static void qkv_projections(const basic_layer_weights<T>& w, const attention_adapters<T>& ad, pass mode,
                              const matrix_t<T>& x, basic_bert_workspace<T>& ws, layer_activations<T>& a) {
    using profile::phase;
    if (ad.query != nullptr && ad.key != nullptr && ad.value != nullptr) {
      const profile::scope timer(phase::qv_projection);
      const auto group = qkv_group(w, ad);
      if (training(mode)) {
        vera::forward(x, group).train(a.query_value_context).using_workspace(ws.adapter_scratch).eval_to(a.q, a.k, a.v);
      } else {
        vera::forward(x, group).using_workspace(ws.adapter_scratch).eval_to(a.q, a.k, a.v);
      }
      return;
    }
    {
      const profile::scope timer(phase::qv_projection);
      if (ad.query != nullptr && ad.value != nullptr) {
        // Query and value read the same input through one projection: a sibling group.
        const auto group = qv_group(w, ad);
        if (training(mode)) {
          vera::forward(x, group).train(a.query_value_context).using_workspace(ws.adapter_scratch).eval_to(a.q, a.v);
        } else {
          vera::forward(x, group).using_workspace(ws.adapter_scratch).eval_to(a.q, a.v);
        }
      } else {
        project(w.query, ad.query, ad.lora_query, mode, x, a.q, a.query_context, a.lora_query_p, ws.adapter_scratch);
        project(w.value, ad.value, ad.lora_value, mode, x, a.v, a.value_context, a.lora_value_p, ws.adapter_scratch);
      }
    }
    const profile::scope timer(phase::k_projection);
    project(w.key, ad.key, mode, x, a.k, a.key_context, ws.adapter_scratch);
  }

  void layer_forward(const basic_layer_weights<T>& w, const attention_adapters<T>& adapters, pass mode,
                     const matrix_t<T>& x, basic_bert_workspace<T>& ws, layer_activations<T>& a) const {
    using profile::phase;
    const T eps = static_cast<T>(config_.layer_norm_eps);
    qkv_projections(w, adapters, mode, x, ws, a);
    layer_scratch<T>& s = ws.scratch;
    // Full fine-tuning needs each linear layer's input in its backward: kept per layer then.
    const bool keep = mode == pass::train_weights;
    matrix_t<T>& context = keep ? a.context : s.context;
    matrix_t<T>& attention_out = keep ? a.attention_out : s.attention_out;
    matrix_t<T>& intermediate_out = keep ? a.intermediate_out : s.intermediate_out;
    attention(ws, a, context);
    {
      const profile::scope timer(phase::attention_output);
      project(w.attention_output, adapters.attention_output, mode, context, s.attention_sum,
              a.attention_output_context, ws.adapter_scratch);
    }
    {
      const profile::scope timer(phase::layer_norm);
      s.attention_sum += x;
      detail::layer_norm(s.attention_sum, w.attention_norm, eps, a.attention_hat, a.attention_rstd, attention_out);
    }
    {
      const profile::scope timer(phase::ffn_gemm);
      project(w.intermediate, adapters.intermediate, mode, attention_out, a.intermediate_in, a.intermediate_context,
              ws.adapter_scratch);
    }
    {
      const profile::scope timer(phase::gelu);
      detail::gelu(a.intermediate_in, intermediate_out);
    }
    {
      const profile::scope timer(phase::ffn_gemm);
      project(w.output, adapters.output, mode, intermediate_out, s.output_sum, a.output_context, ws.adapter_scratch);
    }
    const profile::scope timer(phase::layer_norm);
    s.output_sum += attention_out;
    detail::layer_norm(s.output_sum, w.output_norm, eps, a.output_hat, a.output_rstd, a.out);
  }

  bert_config config_;
  basic_embedding_weights<T> embeddings_;
  std::vector<basic_layer_weights<T>> layers_;
  basic_linear_weights<T> pooler_;
};
using bert_encoder = basic_bert_encoder<float>;

/// \brief BertForSequenceClassification at evaluation: encoder, pooler, then a linear classifier
///        on the pooled [CLS] (dropout is the identity at evaluation).
template <class T>
class basic_bert_classifier {
 public:
  basic_bert_classifier(basic_bert_encoder<T> encoder, basic_linear_weights<T> classifier)
      : encoder_(std::move(encoder)), classifier_(std::move(classifier)) {
    const index h = encoder_.config().hidden_size;
    if (classifier_.weight.cols() != h || classifier_.bias.size() != classifier_.weight.rows())
      throw vera::shape_error("bert_classifier: classifier weight is " +
                              std::to_string(classifier_.weight.rows()) + " x " +
                              std::to_string(classifier_.weight.cols()) + " with a bias of " +
                              std::to_string(classifier_.bias.size()) + ", expected labels x " +
                              std::to_string(h) + " and labels");
  }

  /// \brief A saved BertForSequenceClassification (transformers' save_pretrained): `dir` holds
  ///        config.json and model.safetensors with "bert."-prefixed encoder tensors and
  ///        "classifier.weight"/"classifier.bias"; a BertModel checkpoint (no prefix) needs the
  ///        classifier from elsewhere: see load_encoder.
  /// \throws vera::io_error or vera::format_error naming the file, with a pointer to
  ///         scripts/fetch-minilm.sh when the files are missing or unreadable.
  static basic_bert_classifier load(const std::filesystem::path& dir) {
    return detail::with_fetch_hint(dir, [&] {
      const bert_config config = bert_config::from_file(dir / "config.json");
      const vera::io::safetensors_file file(dir / "model.safetensors");
      const std::string prefix = file.contains("bert.embeddings.word_embeddings.weight") ? "bert." : "";
      basic_linear_weights<T> head{
          vera::io::read_matrix<T>(file, "classifier.weight"),
          vera::io::read_vector<T>(file, "classifier.bias")};
      return basic_bert_classifier(basic_bert_encoder<T>(config, file, prefix), std::move(head));
    });
  }

  /// \brief The encoder of the checkpoint in `dir` (config.json, model.safetensors; BertModel's
  ///        unprefixed names or BertForSequenceClassification's "bert." ones).
  /// \throws as load.
  static basic_bert_encoder<T> load_encoder(const std::filesystem::path& dir) {
    return detail::with_fetch_hint(dir, [&] {
      const bert_config config = bert_config::from_file(dir / "config.json");
      const vera::io::safetensors_file file(dir / "model.safetensors");
      const std::string prefix = file.contains("bert.embeddings.word_embeddings.weight") ? "bert." : "";
      return basic_bert_encoder<T>(config, file, prefix);
    });
  }

  const basic_bert_encoder<T>& encoder() const noexcept { return encoder_; }
  basic_bert_encoder<T>& encoder() noexcept { return encoder_; }
  const basic_linear_weights<T>& classifier() const noexcept { return classifier_; }
  /// \brief The head, writable (to train it).
  basic_linear_weights<T>& classifier() noexcept { return classifier_; }

  /// \brief Logits (batch x labels) of `tokens`, computed into `ws` (which keeps every
  ///        intermediate result; see bert_workspace).
  const matrix_t<T>& forward(const token_batch& tokens, basic_bert_workspace<T>& ws) const {
    return forward(tokens, ws, {}, pass::evaluate);
  }

  /// \brief As above with VeRA adapters on query and value (see basic_bert_encoder::forward).
  const matrix_t<T>& forward(const token_batch& tokens, basic_bert_workspace<T>& ws,
                             const std::vector<attention_adapters<T>>& adapters, pass mode) const {
    encoder_.forward(tokens, ws, adapters, mode);
    const profile::scope timer(profile::phase::pooler_head);
    classifier_.forward(ws.pooled, ws.logits);
    return ws.logits;
  }

 private:
  basic_bert_encoder<T> encoder_;
  basic_linear_weights<T> classifier_;
};
using bert_classifier = basic_bert_classifier<float>;

}  // namespace minilm
