// SPDX-License-Identifier: Apache-2.0
// Host reference for the CUDA tests: the CPU library's projection and optimizers, and naive
// float64 VeRA loops.
#include "reference.hpp"

#include <Eigen/Core>

#include <vera/optim.hpp>

namespace vera_test {

host_projection cpu_projection(const vera::projection_spec& spec) {
  host_projection out;
  out.a.resize(static_cast<std::size_t>(spec.rank * spec.max_in));
  out.b.resize(static_cast<std::size_t>(spec.max_out * spec.rank));
  vera::generate_projection(spec, out.a.data(), out.b.data());
  return out;
}

namespace {

double weight(const problem& p, vera::index o, vera::index i) {
  return p.fan_in_fan_out ? p.w0[static_cast<std::size_t>(i * p.out + o)]
                          : p.w0[static_cast<std::size_t>(o * p.in + i)];
}

double keep(const problem& p, vera::index row, vera::index col) {
  if (p.mask == nullptr || p.mask->probability == 0.0) return 1.0;
  return vera::dropout_keeps(*p.mask, row, col) ? 1.0 / (1.0 - p.mask->probability) : 0.0;
}

}  // namespace

reference_result naive_reference(const problem& p) {
  using std::size_t;
  const auto at = [](vera::index row, vera::index col, vera::index cols) {
    return static_cast<size_t>(row * cols + col);
  };
  reference_result r;
  r.p.assign(static_cast<size_t>(p.n * p.rank), 0.0);
  r.y.assign(static_cast<size_t>(p.n * p.out), 0.0);
  for (vera::index row = 0; row < p.n; ++row) {
    for (vera::index k = 0; k < p.rank; ++k) {
      double s = 0;
      for (vera::index i = 0; i < p.in; ++i) {
        s += keep(p, row, i) * p.x[at(row, i, p.in)] * p.a[at(k, i, p.in)];
      }
      r.p[at(row, k, p.rank)] = s;
    }
    for (vera::index o = 0; o < p.out; ++o) {
      double s = p.bias.empty() ? 0.0 : p.bias[static_cast<size_t>(o)];
      for (vera::index i = 0; i < p.in; ++i) s += p.x[at(row, i, p.in)] * weight(p, o, i);
      double q = 0;
      for (vera::index k = 0; k < p.rank; ++k) {
        q += r.p[at(row, k, p.rank)] * p.lambda_d[static_cast<size_t>(k)] * p.b[at(o, k, p.rank)];
      }
      r.y[at(row, o, p.out)] = s + p.lambda_b[static_cast<size_t>(o)] * q;
    }
  }
  // T = (G Λb) B, n x rank.
  std::vector<double> t(static_cast<size_t>(p.n * p.rank), 0.0);
  for (vera::index row = 0; row < p.n; ++row) {
    for (vera::index k = 0; k < p.rank; ++k) {
      double s = 0;
      for (vera::index o = 0; o < p.out; ++o) {
        s += p.g[at(row, o, p.out)] * p.lambda_b[static_cast<size_t>(o)] * p.b[at(o, k, p.rank)];
      }
      t[at(row, k, p.rank)] = s;
    }
  }
  r.grad_b.assign(static_cast<size_t>(p.out), 0.0);
  r.grad_d.assign(static_cast<size_t>(p.rank), 0.0);
  for (vera::index row = 0; row < p.n; ++row) {
    for (vera::index o = 0; o < p.out; ++o) {
      double q = 0;
      for (vera::index k = 0; k < p.rank; ++k) {
        q += r.p[at(row, k, p.rank)] * p.lambda_d[static_cast<size_t>(k)] * p.b[at(o, k, p.rank)];
      }
      r.grad_b[static_cast<size_t>(o)] += p.g[at(row, o, p.out)] * q;
    }
    for (vera::index k = 0; k < p.rank; ++k) {
      r.grad_d[static_cast<size_t>(k)] += t[at(row, k, p.rank)] * r.p[at(row, k, p.rank)];
    }
  }
  r.grad_x.assign(static_cast<size_t>(p.n * p.in), 0.0);
  for (vera::index row = 0; row < p.n; ++row) {
    for (vera::index i = 0; i < p.in; ++i) {
      double base = 0;
      for (vera::index o = 0; o < p.out; ++o) base += p.g[at(row, o, p.out)] * weight(p, o, i);
      double adapter = 0;
      for (vera::index k = 0; k < p.rank; ++k) {
        adapter += t[at(row, k, p.rank)] * p.lambda_d[static_cast<size_t>(k)] * p.a[at(k, i, p.in)];
      }
      r.grad_x[at(row, i, p.in)] = base + keep(p, row, i) * adapter;
    }
  }
  r.merged = p.w0;
  for (vera::index o = 0; o < p.out; ++o) {
    for (vera::index i = 0; i < p.in; ++i) {
      double delta = 0;
      for (vera::index k = 0; k < p.rank; ++k) {
        delta += p.lambda_b[static_cast<size_t>(o)] * p.b[at(o, k, p.rank)] *
                 p.lambda_d[static_cast<size_t>(k)] * p.a[at(k, i, p.in)];
      }
      r.merged[p.fan_in_fan_out ? at(i, o, p.out) : at(o, i, p.in)] += delta;
    }
  }
  return r;
}

namespace {

template <class Optimizer>
std::vector<float> run_optimizer(Optimizer& opt, std::vector<float> value,
                                 const std::vector<std::vector<float>>& gradients, bool decay) {
  Eigen::Map<Eigen::VectorXf> v(value.data(), static_cast<Eigen::Index>(value.size()));
  Eigen::VectorXf g(v.size());
  opt.add("value", v, g, decay);
  for (const std::vector<float>& step : gradients) {
    g = Eigen::Map<const Eigen::VectorXf>(step.data(), g.size());
    opt.step();
  }
  return value;
}

}  // namespace

std::vector<float> cpu_sgd(std::vector<float> value, const std::vector<std::vector<float>>& gradients,
                           const sgd_setup& setup) {
  vera::optim::sgd<float> opt({setup.lr, setup.momentum, setup.dampening, setup.weight_decay, setup.nesterov});
  return run_optimizer(opt, std::move(value), gradients, setup.decay);
}

std::vector<float> cpu_adamw(std::vector<float> value, const std::vector<std::vector<float>>& gradients,
                             const adamw_setup& setup) {
  vera::optim::adamw<float> opt({setup.lr, setup.beta1, setup.beta2, setup.eps, setup.weight_decay});
  return run_optimizer(opt, std::move(value), gradients, setup.decay);
}

}  // namespace vera_test
