// SPDX-License-Identifier: Apache-2.0
// A LibTorch module whose forward and backward run vera on the tensors' own memory: VeraLinear is
// a frozen nn.Linear with a VeRA adapter, trained by any torch optimizer through autograd.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>

#include <vera/vera.hpp>

namespace vera_torch {

using row_matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using const_row_map = Eigen::Map<const row_matrix>;
using row_map = Eigen::Map<row_matrix>;

/// \brief Checks that `t` can be viewed in place as a dense float matrix or vector on the CPU;
///        throws c10::Error naming the operand and what it got.
inline void require_viewable(const torch::Tensor& t, const char* operand, int64_t dims) {
  TORCH_CHECK(t.defined(), operand, ": tensor is undefined");
  TORCH_CHECK(t.device().is_cpu(), operand, ": expected a CPU tensor, got one on ", t.device());
  TORCH_CHECK(t.scalar_type() == torch::kFloat32, operand, ": expected float32, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == dims, operand, ": expected ", dims, " dimensions, got ", t.dim(), " (shape ",
              t.sizes(), ")");
  TORCH_CHECK(t.is_contiguous(), operand, ": expected a contiguous tensor (call .contiguous() first)");
}

inline const_row_map view(const torch::Tensor& t) {
  return const_row_map(t.data_ptr<float>(), t.size(0), t.size(1));
}

/// \brief What one VeraLinear keeps across forward and backward: the vera adapter (whose b and d
///        are the module's parameters, shared memory), W0 and bias, the saved context, scratch.
struct layer_state {
  layer_state(const vera::projection<float>& shared, torch::Tensor weight, torch::Tensor bias_)
      : w0(std::move(weight)), bias(std::move(bias_)),
        adapter(shared, w0.size(1), w0.size(0)) {}
  torch::Tensor w0;    // out x in, frozen
  torch::Tensor bias;  // out, frozen (may be undefined)
  vera::adapter<float> adapter;
  vera::forward_context<float> context;
  vera::workspace<float> workspace;
};

/// \brief The autograd function: inputs x, lambda_b, lambda_d (the last two so that autograd
///        routes their gradients); the layer state travels as an opaque pointer.
class VeraLinearFunction : public torch::autograd::Function<VeraLinearFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& lambda_b, const torch::Tensor& lambda_d,
                               int64_t state_address) {
    auto* state = reinterpret_cast<layer_state*>(state_address);
    require_viewable(x, "VeraLinear input", 2);
    const auto& ad = state->adapter;
    TORCH_CHECK(x.size(1) == ad.in_features(), "VeraLinear input: expected ", ad.in_features(),
                " columns (in_features), got ", x.size(1));
    TORCH_CHECK(lambda_b.data_ptr<float>() == ad.lambda_b().data() &&
                    lambda_d.data_ptr<float>() == ad.lambda_d().data(),
                "VeraLinear: lambda_b/lambda_d must be the module's own parameters");
    torch::Tensor y = torch::empty({x.size(0), ad.out_features()}, x.options());
    row_map out(y.data_ptr<float>(), y.size(0), y.size(1));
    const const_row_map in = view(x), w0 = view(state->w0);
    if (state->bias.defined()) {
      const Eigen::Map<const Eigen::VectorXf> b(state->bias.data_ptr<float>(), state->bias.size(0));
      out = vera::forward(in, w0, b, ad).train(state->context).using_workspace(state->workspace);
    } else {
      out = vera::forward(in, w0, vera::no_bias, ad).train(state->context).using_workspace(state->workspace);
    }
    ctx->saved_data["state"] = state_address;
    // The context holds this forward's P; a second forward before this backward would replace it.
    ctx->saved_data["step"] = static_cast<int64_t>(state->context.next_step());
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    auto* state = reinterpret_cast<layer_state*>(ctx->saved_data["state"].toInt());
    TORCH_CHECK(static_cast<uint64_t>(ctx->saved_data["step"].toInt()) == state->context.next_step(),
                "VeraLinear: the layer ran another forward before this backward; vera keeps one "
                "saved context per layer");
    const torch::Tensor g = grad_outputs[0].contiguous();
    require_viewable(g, "VeraLinear output gradient", 2);
    const auto& ad = state->adapter;
    const const_row_map upstream = view(g);

    torch::Tensor grad_b = torch::empty({ad.out_features()}, g.options());
    torch::Tensor grad_d = torch::empty({ad.rank()}, g.options());
    vera::gradients<float> grads;
    grads.lambda_b.resize(ad.out_features());
    grads.lambda_d.resize(ad.rank());
    grads = vera::parameter_gradients(upstream, ad, state->context).using_workspace(state->workspace);
    Eigen::Map<Eigen::VectorXf>(grad_b.data_ptr<float>(), ad.out_features()) = grads.lambda_b;
    Eigen::Map<Eigen::VectorXf>(grad_d.data_ptr<float>(), ad.rank()) = grads.lambda_d;

    torch::Tensor grad_x = torch::empty({g.size(0), ad.in_features()}, g.options());
    row_map dx(grad_x.data_ptr<float>(), grad_x.size(0), grad_x.size(1));
    dx = vera::input_gradient(upstream, view(state->w0), ad, state->context).using_workspace(state->workspace);
    return {grad_x, grad_b, grad_d, torch::Tensor()};
  }
};

/// \brief nn.Linear(in, out) with frozen weight and bias and a VeRA adapter on `shared`.
///        Parameters: lambda_b (out) and lambda_d (rank), views of the adapter's own vectors.
class VeraLinearImpl : public torch::nn::Module {
 public:
  VeraLinearImpl(const vera::projection<float>& shared, torch::Tensor weight, torch::Tensor bias) {
    require_viewable(weight, "VeraLinear weight", 2);
    if (bias.defined()) {
      require_viewable(bias, "VeraLinear bias", 1);
      TORCH_CHECK(bias.size(0) == weight.size(0), "VeraLinear bias: expected ", weight.size(0),
                  " elements, got ", bias.size(0));
    }
    state_ = std::make_unique<layer_state>(shared, register_buffer("weight", weight.detach().clone()),
                                           bias.defined() ? register_buffer("bias", bias.detach().clone())
                                                          : torch::Tensor());
    auto& ad = state_->adapter;
    // from_blob: the torch parameters and the adapter share storage, so an optimizer step in
    // torch is immediately what vera computes with, and nothing is copied per step.
    lambda_b_ = register_parameter("lambda_b", torch::from_blob(ad.lambda_b().data(), {ad.out_features()}));
    lambda_d_ = register_parameter("lambda_d", torch::from_blob(ad.lambda_d().data(), {ad.rank()}));
  }

  torch::Tensor forward(const torch::Tensor& x) {
    return VeraLinearFunction::apply(x, lambda_b_, lambda_d_, reinterpret_cast<int64_t>(state_.get()));
  }

  const vera::adapter<float>& adapter() const { return state_->adapter; }
  const torch::Tensor& lambda_b() const { return lambda_b_; }
  const torch::Tensor& lambda_d() const { return lambda_d_; }

 private:
  std::unique_ptr<layer_state> state_;
  torch::Tensor lambda_b_;
  torch::Tensor lambda_d_;
};
TORCH_MODULE(VeraLinear);

}  // namespace vera_torch
