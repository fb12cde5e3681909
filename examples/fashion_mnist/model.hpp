// SPDX-License-Identifier: Apache-2.0
// A small MLP whose hidden layers are frozen, fully trained, or adapted with VeRA or LoRA.
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <Eigen/Core>
#include <vera/optim.hpp>
#include <vera/vera.hpp>

#include "dataset.hpp"

namespace fashion {

using dense_matrix = Eigen::MatrixXf;
using vec = Eigen::VectorXf;

/// \brief Uniform in [-bound, bound) from the top 24 bits of an mt19937 draw: the same numbers
///        on every standard library (std::uniform_real_distribution is not specified that far).
inline float uniform(std::mt19937& rng, float bound) {
  const float unit = static_cast<float>(rng() >> 8) * (1.0f / 16777216.0f);
  return (2.0f * unit - 1.0f) * bound;
}

/// \brief Weights (out x in) and bias of one linear layer.
struct linear_weights {
  dense_matrix w;
  vec b;
  /// torch.nn.Linear's default initialisation: U(-1/sqrt(in), 1/sqrt(in)) for both.
  static linear_weights init(Eigen::Index in, Eigen::Index out, std::mt19937& rng) {
    linear_weights l{dense_matrix(out, in), vec(out)};
    const float bound = 1.0f / std::sqrt(static_cast<float>(in));
    for (Eigen::Index i = 0; i < l.w.size(); ++i) l.w.data()[i] = uniform(rng, bound);
    for (Eigen::Index i = 0; i < l.b.size(); ++i) l.b(i) = uniform(rng, bound);
    return l;
  }
};

/// \brief How a layer is trained.
enum class mode { frozen, full, vera, lora };

/// \brief One linear layer z = x Wᵀ + b (+ adapter). Keeps its gradient buffers so that an
///        optimizer registered once updates them every step.
class layer {
 public:
  /// \brief A frozen or fully trained layer.
  layer(linear_weights weights, mode how) : kind_(how), base_(std::move(weights)) {
    if (kind_ == mode::full) {
      grad_w_ = dense_matrix::Zero(base_.w.rows(), base_.w.cols());
      grad_b_ = vec::Zero(base_.b.size());
    }
  }
  /// \brief A frozen layer adapted with VeRA on `shared`.
  layer(linear_weights weights, const vera::projection<float>& shared,
        const vera::adapter_options& options)
      : kind_(mode::vera) {
    const Eigen::Index in = weights.w.cols(), out = weights.w.rows();
    vera_.emplace(std::move(weights.w), std::move(weights.b), vera::adapter<float>(shared, in, out, options));
    vera_grads_ = vera::gradients<float>(vera_->vera_adapter());
  }
  /// \brief A frozen layer adapted with LoRA of rank r (A: PEFT's kaiming-uniform, B = 0;
  ///        scaling alpha / r with alpha = r).
  layer(linear_weights weights, Eigen::Index r, std::mt19937& rng)
      : kind_(mode::lora), base_(std::move(weights)) {
    const Eigen::Index in = base_.w.cols(), out = base_.w.rows();
    lora_a_.resize(r, in);
    const float bound = 1.0f / std::sqrt(static_cast<float>(in));
    for (Eigen::Index i = 0; i < lora_a_.size(); ++i) lora_a_.data()[i] = uniform(rng, bound);
    lora_b_ = dense_matrix::Zero(out, r);
    grad_a_ = dense_matrix::Zero(r, in);
    grad_b_lora_ = dense_matrix::Zero(out, r);
  }

  mode kind() const { return kind_; }
  Eigen::Index out_features() const { return kind_ == mode::vera ? vera_->weight().rows() : base_.w.rows(); }

  /// \brief z (n x out) from x (n x in); `train` saves what backward needs.
  template <class X>
  void forward(const Eigen::MatrixBase<X>& x, dense_matrix& z, bool train) {
    switch (kind_) {
      case mode::vera:
        if (train) {
          vera_->forward_train(x, z);
        } else {
          vera_->forward(x, z);
        }
        return;
      case mode::lora:
        lora_u_.noalias() = x * lora_a_.transpose();
        z.noalias() = x * base_.w.transpose();
        z.noalias() += lora_u_ * lora_b_.transpose();
        break;
      default:
        z.noalias() = x * base_.w.transpose();
    }
    z.rowwise() += base_.b.transpose();
  }

  /// \brief Gradients of this layer's trained tensors from g = dL/dz (n x out) and its input x,
  ///        and dL/dx into `dx` when it is not null.
  template <class X>
  void backward(const Eigen::MatrixBase<X>& x, const dense_matrix& g, dense_matrix* dx) {
    switch (kind_) {
      case mode::frozen:
        break;
      case mode::full:
        grad_w_.noalias() = g.transpose() * x;
        grad_b_ = g.colwise().sum().transpose();
        break;
      case mode::vera:
        if (dx != nullptr) {
          vera_->backward(g, vera_grads_, *dx);
          return;
        }
        vera_->backward(g, vera_grads_);
        return;
      case mode::lora:
        grad_b_lora_.noalias() = g.transpose() * lora_u_;
        lora_gb_.noalias() = g * lora_b_;
        grad_a_.noalias() = lora_gb_.transpose() * x;
        if (dx != nullptr) {
          dx->noalias() = g * base_.w;
          dx->noalias() += lora_gb_ * lora_a_;
        }
        return;
    }
    if (dx != nullptr) dx->noalias() = g * base_.w;
  }

  /// \brief Registers the trained tensors with `opt` under `name` (biases without weight decay).
  void register_with(vera::optim::adamw<float>& opt, const std::string& name) {
    switch (kind_) {
      case mode::frozen:
        return;
      case mode::full:
        opt.add(name + ".weight", base_.w, grad_w_);
        opt.add(name + ".bias", base_.b, grad_b_, /*decay=*/false);
        return;
      case mode::vera:
        opt.add(name, *vera_, vera_grads_);
        return;
      case mode::lora:
        opt.add(name + ".lora_A", lora_a_, grad_a_);
        opt.add(name + ".lora_B", lora_b_, grad_b_lora_);
        return;
    }
  }

  /// \brief Registers the gradient buffers of the trained tensors with `bucket` (for example a
  ///        vera::distributed::gradient_bucket), under the names register_with uses.
  template <class Bucket>
  void register_gradients(Bucket& bucket, const std::string& name) {
    switch (kind_) {
      case mode::frozen:
        return;
      case mode::full:
        bucket.add(name + ".weight", grad_w_);
        bucket.add(name + ".bias", grad_b_);
        return;
      case mode::vera:
        bucket.add(name, static_cast<const vera::linear<float>&>(*vera_).vera_adapter(), vera_grads_);
        return;
      case mode::lora:
        bucket.add(name + ".lora_A", grad_a_);
        bucket.add(name + ".lora_B", grad_b_lora_);
        return;
    }
  }

  /// \brief Scalars this layer trains.
  Eigen::Index trainable() const {
    switch (kind_) {
      case mode::frozen: return 0;
      case mode::full: return base_.w.size() + base_.b.size();
      case mode::vera: return vera_->vera_adapter().trainable_parameters();
      case mode::lora: return lora_a_.size() + lora_b_.size();
    }
    return 0;
  }

  const linear_weights& weights() const { return base_; }
  vera::linear<float>& vera_layer() { return *vera_; }
  const vera::linear<float>& vera_layer() const { return *vera_; }

 private:
  mode kind_;
  linear_weights base_;
  dense_matrix grad_w_;
  vec grad_b_;
  std::optional<vera::linear<float>> vera_;
  vera::gradients<float> vera_grads_;
  dense_matrix lora_a_, lora_b_, grad_a_, grad_b_lora_, lora_u_, lora_gb_;
};

/// \brief 784 -> hidden -> hidden -> classes with ReLU: fc1, fc2 (the adapted layers) and head.
class mlp {
 public:
  mlp(layer fc1, layer fc2, layer head)
      : fc1_(std::move(fc1)), fc2_(std::move(fc2)), head_(std::move(head)) {}

  layer& fc1() { return fc1_; }
  layer& fc2() { return fc2_; }
  layer& head() { return head_; }
  const layer& fc1_view() const { return fc1_; }
  const layer& fc2_view() const { return fc2_; }
  const layer& head_view() const { return head_; }

  /// \brief Logits (n x classes) of a batch, without saving anything for backward.
  const dense_matrix& predict(const matrix& x) {
    run_forward(x, false);
    return logits_;
  }

  /// \brief One forward and backward pass on a batch: mean cross-entropy loss; gradients are left
  ///        in the layers' buffers for the optimizers.
  float train_step(const matrix& x, const std::vector<int>& labels) {
    run_forward(x, true);
    const Eigen::Index n = x.rows();
    // Softmax cross-entropy; the gradient of the mean loss is (softmax - onehot) / n.
    g_logits_.resize(logits_.rows(), logits_.cols());
    double loss = 0;
    for (Eigen::Index i = 0; i < n; ++i) {
      const float peak = logits_.row(i).maxCoeff();
      g_logits_.row(i) = (logits_.row(i).array() - peak).exp();
      const float total = g_logits_.row(i).sum();
      const int y = labels[static_cast<std::size_t>(i)];
      loss -= std::log(g_logits_(i, y) / total);
      g_logits_.row(i) /= total;
      g_logits_(i, y) -= 1.0f;
    }
    g_logits_ /= static_cast<float>(n);

    const bool fc2_trains = fc2_.kind() != mode::frozen;
    const bool fc1_trains = fc1_.kind() != mode::frozen;
    head_.backward(h2_, g_logits_, fc1_trains || fc2_trains ? &g_h2_ : nullptr);
    if (!fc1_trains && !fc2_trains) return static_cast<float>(loss / static_cast<double>(n));
    relu_backward(z2_, g_h2_);
    fc2_.backward(h1_, g_h2_, fc1_trains ? &g_h1_ : nullptr);
    if (fc1_trains) {
      relu_backward(z1_, g_h1_);
      fc1_.backward(x, g_h1_, nullptr);
    }
    return static_cast<float>(loss / static_cast<double>(n));
  }

  Eigen::Index trainable() const { return fc1_.trainable() + fc2_.trainable() + head_.trainable(); }

 private:
  void run_forward(const matrix& x, bool train) {
    fc1_.forward(x, z1_, train);
    h1_ = z1_.cwiseMax(0.0f);
    fc2_.forward(h1_, z2_, train);
    h2_ = z2_.cwiseMax(0.0f);
    head_.forward(h2_, logits_, train);
  }
  // g := g where z > 0, else 0 (in place).
  static void relu_backward(const dense_matrix& z, dense_matrix& g) {
    g = (z.array() > 0.0f).select(g, 0.0f);
  }

  layer fc1_, fc2_, head_;
  dense_matrix z1_, h1_, z2_, h2_, logits_, g_logits_, g_h2_, g_h1_;
};

/// \brief Fraction of `data` classified correctly, evaluated in chunks of `chunk` rows.
inline double accuracy(mlp& net, const labelled& data, Eigen::Index chunk = 1000) {
  Eigen::Index correct = 0;
  matrix x;
  for (Eigen::Index start = 0; start < data.size(); start += chunk) {
    const Eigen::Index rows = std::min(chunk, data.size() - start);
    x = data.images.middleRows(start, rows);
    const dense_matrix& logits = net.predict(x);
    for (Eigen::Index i = 0; i < rows; ++i) {
      Eigen::Index best = 0;
      logits.row(i).maxCoeff(&best);
      correct += best == data.labels[static_cast<std::size_t>(start + i)] ? 1 : 0;
    }
  }
  return data.size() == 0 ? 0.0 : static_cast<double>(correct) / static_cast<double>(data.size());
}

}  // namespace fashion
