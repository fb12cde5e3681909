// SPDX-License-Identifier: Apache-2.0
// Host reference for the CUDA tests, compiled by the host compiler in reference.cpp.
#pragma once

#include <cstdint>
#include <vector>

#include "vera/core/dropout.hpp"
#include "vera/core/projection_spec.hpp"

namespace vera_test {

/// A projection filled by the CPU library (host compiler), row-major float32.
struct host_projection {
  std::vector<float> a;  // rank x max_in
  std::vector<float> b;  // max_out x rank
};
host_projection cpu_projection(const vera::projection_spec& spec);

/// One dense float64 problem: every operand row-major, layer slices of the projection applied.
struct problem {
  vera::index n = 0, in = 0, out = 0, rank = 0;
  bool fan_in_fan_out = false;
  std::vector<double> a;         // rank x in (layer slice)
  std::vector<double> b;         // out x rank (layer slice)
  std::vector<double> lambda_b;  // out
  std::vector<double> lambda_d;  // rank
  std::vector<double> x;         // n x in
  std::vector<double> w0;        // out x in, or in x out with fan_in_fan_out
  std::vector<double> bias;      // out, may be empty
  std::vector<double> g;         // n x out
  const vera::dropout_key* mask = nullptr;
};

struct reference_result {
  std::vector<double> y;       // n x out
  std::vector<double> p;       // n x rank
  std::vector<double> grad_b;  // out
  std::vector<double> grad_d;  // rank
  std::vector<double> grad_x;  // n x in
  std::vector<double> merged;  // W0 + ΔW in W0's storage order
};

/// Textbook VeRA in float64 loops (VERA.md section 3), independent of every optimised path.
reference_result naive_reference(const problem& p);

/// The host optimizers (vera::optim, float) over one vector: one step per entry of `gradients`,
/// each as long as `value`; returns the values after the last step.
struct sgd_setup {
  double lr, momentum, dampening, weight_decay;
  bool nesterov, decay;
};
std::vector<float> cpu_sgd(std::vector<float> value, const std::vector<std::vector<float>>& gradients,
                           const sgd_setup& setup);
struct adamw_setup {
  double lr, beta1, beta2, eps, weight_decay;
  bool decay;
};
std::vector<float> cpu_adamw(std::vector<float> value, const std::vector<std::vector<float>>& gradients,
                             const adamw_setup& setup);

}  // namespace vera_test
