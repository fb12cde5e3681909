// SPDX-License-Identifier: Apache-2.0
// BERT's encoder, pooler and sequence-classification head in float32 over Eigen, as transformers
// computes BertForSequenceClassification at evaluation (no dropout).
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
#include <vera/core/error.hpp>
#include <vera/io/error.hpp>
#include <vera/io/file.hpp>
#include <vera/io/matrix.hpp>
#include <vera/io/safetensors.hpp>

#include "tokenizer.hpp"

namespace minilm {

using matrix = Eigen::MatrixXf;  // column-major, as vera::linear stores W0
using vec = Eigen::VectorXf;
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

/// \brief A linear layer's weight (out x in, nn.Linear's layout) and bias: the W0 and bias that
///        vera::forward and vera::linear take, so a layer can later be adapted without copying.
struct linear_weights {
  matrix weight;
  vec bias;

  /// \brief y (n x out) = x (n x in) Wᵀ + b, into a y that keeps its storage between calls.
  template <class XD>
  void forward(const Eigen::MatrixBase<XD>& x, matrix& y) const {
    y.noalias() = x * weight.transpose();
    y.rowwise() += bias.transpose();
  }
};

/// \brief LayerNorm's gain and shift.
struct norm_weights {
  vec gamma;
  vec beta;
};

/// \brief One encoder layer's weights, named after transformers' BertLayer modules.
struct layer_weights {
  linear_weights query, key, value;
  linear_weights attention_output;  ///< attention.output.dense
  norm_weights attention_norm;      ///< attention.output.LayerNorm
  linear_weights intermediate;      ///< intermediate.dense
  linear_weights output;            ///< output.dense
  norm_weights output_norm;         ///< output.LayerNorm
};

/// \brief What one encoder layer computes, kept between steps (the storage is reused when the
///        batch shape repeats) and kept whole because a backward pass needs it. Rows are tokens:
///        row b * length + t is token t of sequence b.
struct layer_activations {
  matrix q, k, v;              ///< tokens x hidden
  matrix probabilities;        ///< (batch * heads * length) x length: softmax of each head
  matrix context;              ///< tokens x hidden: heads' outputs side by side
  matrix attention_sum;        ///< attention.output.dense(context) + layer input
  matrix attention_hat;        ///< attention_sum normalized, before gain and shift
  vec attention_rstd;          ///< 1 / sqrt(var + eps) of each row of attention_sum
  matrix attention_out;        ///< LayerNorm(attention_sum)
  matrix intermediate_in;      ///< intermediate.dense(attention_out), before GELU
  matrix intermediate_out;     ///< GELU(intermediate_in)
  matrix output_sum;           ///< output.dense(intermediate_out) + attention_out
  matrix output_hat;
  vec output_rstd;
  matrix out;                  ///< LayerNorm(output_sum): the layer's output
};

/// \brief Reusable buffers of a whole forward pass.
struct bert_workspace {
  matrix embeddings_sum;       ///< word + position + token type, before LayerNorm
  matrix embeddings_hat;
  vec embeddings_rstd;
  matrix embeddings;           ///< the first layer's input
  vec row_scratch;             ///< softmax row maxima and sums
  std::vector<float> key_bias; ///< batch x length: 0 for a real token, lowest float for padding
  std::vector<layer_activations> layers;
  matrix cls;                  ///< batch x hidden: the last hidden state of each [CLS]
  matrix pooler_in;            ///< pooler.dense(cls), before tanh
  matrix pooled;               ///< batch x hidden
  matrix logits;               ///< batch x num_labels
  index batch = 0, length = 0;

  /// \brief The last layer's output (tokens x hidden), or the embeddings without layers.
  const matrix& last_hidden_state() const { return layers.empty() ? embeddings : layers.back().out; }
};

namespace detail {

/// \brief y = gamma ⊙ (x - mean) / sqrt(var + eps) + beta per row (biased variance, as
///        torch.nn.LayerNorm), keeping the normalized rows and their 1/std.
inline void layer_norm(const matrix& x, const norm_weights& w, float eps, matrix& hat, vec& rstd, matrix& y) {
  const float inv_width = 1.0f / static_cast<float>(x.cols());
  rstd.noalias() = x.rowwise().sum() * inv_width;  // the mean, until overwritten below
  hat.noalias() = x.colwise() - rstd;
  rstd = ((hat.array().square().rowwise().sum() * inv_width) + eps).rsqrt().matrix();
  hat.array().colwise() *= rstd.array();
  y.noalias() = ((hat.array().rowwise() * w.gamma.transpose().array()).rowwise() + w.beta.transpose().array()).matrix();
}

/// \brief GELU with the exact erf form that transformers' "gelu" uses.
inline void gelu(const matrix& x, matrix& y) {
  y.resize(x.rows(), x.cols());
  const float* in = x.data();
  float* out = y.data();
  const float inv_sqrt2 = 0.70710678118654752440f;
  for (index i = 0; i < x.size(); ++i) out[i] = 0.5f * in[i] * (1.0f + std::erf(in[i] * inv_sqrt2));
}

/// \brief Softmax of every row of `s` in place, after adding `key_bias` (one entry per column);
///        `row_scratch` (any size) keeps the row maxima and sums without allocating each time.
inline void masked_softmax_rows(Eigen::Ref<matrix> s, const float* key_bias, vec& row_scratch) {
  const Eigen::Map<const Eigen::RowVectorXf> bias(key_bias, s.cols());
  s.rowwise() += bias;
  row_scratch.resize(s.rows());
  row_scratch.noalias() = s.rowwise().maxCoeff();
  s = (s.colwise() - row_scratch).array().exp().matrix();
  row_scratch.noalias() = s.rowwise().sum();
  s.array().colwise() /= row_scratch.array();
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
class bert_encoder {
 public:
  /// \brief Reads every tensor the forward pass needs from `file`, under `prefix` ("" for a
  ///        BertModel checkpoint, "bert." for BertForSequenceClassification).
  /// \throws vera::format_error naming the file and tensor when one is missing or misshapen.
  bert_encoder(const bert_config& config, const vera::io::safetensors_view& file, const std::string& prefix)
      : config_(config) {
    const index h = config.hidden_size, inner = config.intermediate_size;
    const std::string e = prefix + "embeddings.";
    word_ = read_row_major(file, e + "word_embeddings.weight", config.vocab_size, h);
    position_ = read_row_major(file, e + "position_embeddings.weight", config.max_positions, h);
    token_type_ = read_row_major(file, e + "token_type_embeddings.weight", config.type_vocab_size, h);
    embeddings_norm_ = read_norm(file, e + "LayerNorm.", h);
    layers_.resize(static_cast<std::size_t>(config.layers));
    for (index i = 0; i < config.layers; ++i) {
      const std::string l = prefix + "encoder.layer." + std::to_string(i) + ".";
      layer_weights& w = layers_[static_cast<std::size_t>(i)];
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
  const std::vector<layer_weights>& layers() const noexcept { return layers_; }
  /// \brief The layers' weights, writable (to adapt or merge them).
  std::vector<layer_weights>& layers() noexcept { return layers_; }
  const linear_weights& pooler() const noexcept { return pooler_; }

  /// \brief Runs embeddings, every layer and the pooler on `tokens` into `ws`; the result is
  ///        ws.last_hidden_state() and ws.pooled (batch x hidden).
  /// \throws vera::value_error (before computing anything) for a token id, token type or length
  ///         the model has no embedding for, or arrays whose size is not batch x length.
  void forward(const token_batch& tokens, bert_workspace& ws) const {
    check(tokens);
    ws.batch = static_cast<index>(tokens.batch);
    ws.length = static_cast<index>(tokens.length);
    embed(tokens, ws);
    ws.key_bias.resize(tokens.mask.size());
    // transformers adds the lowest float to the scores of padded keys: they get probability 0,
    // and a row without any real key degrades to a uniform average instead of NaN.
    std::transform(tokens.mask.begin(), tokens.mask.end(), ws.key_bias.begin(),
                   [](std::int32_t m) { return m != 0 ? 0.0f : std::numeric_limits<float>::lowest(); });
    ws.layers.resize(layers_.size());
    const matrix* input = &ws.embeddings;
    for (std::size_t i = 0; i < layers_.size(); ++i) {
      layer_forward(layers_[i], *input, ws, ws.layers[i]);
      input = &ws.layers[i].out;
    }
    ws.cls.resize(ws.batch, config_.hidden_size);
    for (index b = 0; b < ws.batch; ++b) ws.cls.row(b) = input->row(b * ws.length);
    pooler_.forward(ws.cls, ws.pooler_in);
    ws.pooled = ws.pooler_in.array().tanh().matrix();
  }

 private:
  using row_matrix = vera::row_matrix<float>;

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
    return vera::io::read_matrix<float>(file, info);
  }

  static vec read_vec(const vera::io::safetensors_view& file, const std::string& name, index size) {
    const auto& info = file.at(name);
    require_shape(file, info, {static_cast<std::uint64_t>(size)});
    return vera::io::read_vector<float>(file, info);
  }

  static linear_weights read_linear(const vera::io::safetensors_view& file, const std::string& prefix, index in,
                                    index out) {
    return {read_row_major(file, prefix + "weight", out, in), read_vec(file, prefix + "bias", out)};
  }

  static norm_weights read_norm(const vera::io::safetensors_view& file, const std::string& prefix, index size) {
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

  void embed(const token_batch& tokens, bert_workspace& ws) const {
    const index n = ws.batch * ws.length;
    ws.embeddings_sum.resize(n, config_.hidden_size);
    for (index b = 0; b < ws.batch; ++b) {
      for (index t = 0; t < ws.length; ++t) {
        const index r = b * ws.length + t;
        const auto cell = static_cast<std::size_t>(r);
        // transformers' order: (word + token type) + position.
        ws.embeddings_sum.row(r) = (word_.row(tokens.ids[cell]) + token_type_.row(tokens.type_ids[cell])) +
                                   position_.row(t);
      }
    }
    detail::layer_norm(ws.embeddings_sum, embeddings_norm_, config_.layer_norm_eps, ws.embeddings_hat,
                       ws.embeddings_rstd, ws.embeddings);
  }

  // Scaled dot-product attention of every sequence and head, from a.q, a.k, a.v.
  void attention(bert_workspace& ws, layer_activations& a) const {
    const index length = ws.length, heads = config_.heads, d = config_.head_size();
    const float scale = 1.0f / std::sqrt(static_cast<float>(d));
    a.probabilities.resize(ws.batch * heads * length, length);
    a.context.resize(ws.batch * length, config_.hidden_size);
    for (index b = 0; b < ws.batch; ++b) {
      const float* key_bias = ws.key_bias.data() + b * length;
      for (index h = 0; h < heads; ++h) {
        auto p = a.probabilities.middleRows((b * heads + h) * length, length);
        const auto q = a.q.block(b * length, h * d, length, d);
        const auto k = a.k.block(b * length, h * d, length, d);
        const auto v = a.v.block(b * length, h * d, length, d);
        p.noalias() = (q * k.transpose()) * scale;
        detail::masked_softmax_rows(p, key_bias, ws.row_scratch);
        a.context.block(b * length, h * d, length, d).noalias() = p * v;
      }
    }
  }

  void layer_forward(const layer_weights& w, const matrix& x, bert_workspace& ws, layer_activations& a) const {
    const float eps = config_.layer_norm_eps;
    w.query.forward(x, a.q);
    w.key.forward(x, a.k);
    w.value.forward(x, a.v);
    attention(ws, a);
    w.attention_output.forward(a.context, a.attention_sum);
    a.attention_sum += x;
    detail::layer_norm(a.attention_sum, w.attention_norm, eps, a.attention_hat, a.attention_rstd, a.attention_out);
    w.intermediate.forward(a.attention_out, a.intermediate_in);
    detail::gelu(a.intermediate_in, a.intermediate_out);
    w.output.forward(a.intermediate_out, a.output_sum);
    a.output_sum += a.attention_out;
    detail::layer_norm(a.output_sum, w.output_norm, eps, a.output_hat, a.output_rstd, a.out);
  }

  bert_config config_;
  row_matrix word_, position_, token_type_;  // row-major: a token's embedding is contiguous
  norm_weights embeddings_norm_;
  std::vector<layer_weights> layers_;
  linear_weights pooler_;
};

/// \brief BertForSequenceClassification at evaluation: encoder, pooler, then a linear classifier
///        on the pooled [CLS] (dropout is the identity at evaluation).
class bert_classifier {
 public:
  bert_classifier(bert_encoder encoder, linear_weights classifier)
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
  static bert_classifier load(const std::filesystem::path& dir) {
    return detail::with_fetch_hint(dir, [&] {
      const bert_config config = bert_config::from_file(dir / "config.json");
      const vera::io::safetensors_file file(dir / "model.safetensors");
      const std::string prefix = file.contains("bert.embeddings.word_embeddings.weight") ? "bert." : "";
      linear_weights head{
          vera::io::read_matrix<float>(file, "classifier.weight"),
          vera::io::read_vector<float>(file, "classifier.bias")};
      return bert_classifier(bert_encoder(config, file, prefix), std::move(head));
    });
  }

  /// \brief The encoder of the checkpoint in `dir` (config.json, model.safetensors; BertModel's
  ///        unprefixed names or BertForSequenceClassification's "bert." ones).
  /// \throws as load.
  static bert_encoder load_encoder(const std::filesystem::path& dir) {
    return detail::with_fetch_hint(dir, [&] {
      const bert_config config = bert_config::from_file(dir / "config.json");
      const vera::io::safetensors_file file(dir / "model.safetensors");
      const std::string prefix = file.contains("bert.embeddings.word_embeddings.weight") ? "bert." : "";
      return bert_encoder(config, file, prefix);
    });
  }

  const bert_encoder& encoder() const noexcept { return encoder_; }
  bert_encoder& encoder() noexcept { return encoder_; }
  const linear_weights& classifier() const noexcept { return classifier_; }

  /// \brief Logits (batch x labels) of `tokens`, computed into `ws` (which keeps every
  ///        intermediate result; see bert_workspace).
  const matrix& forward(const token_batch& tokens, bert_workspace& ws) const {
    encoder_.forward(tokens, ws);
    classifier_.forward(ws.pooled, ws.logits);
    return ws.logits;
  }

 private:
  bert_encoder encoder_;
  linear_weights classifier_;
};

}  // namespace minilm
