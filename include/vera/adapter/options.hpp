// SPDX-License-Identifier: Apache-2.0
// Per-layer adapter settings: initialisation (paper, PEFT and ablation variants), dropout, layout.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include "vera/core/error.hpp"
#include "vera/core/shape.hpp"

namespace vera {

/// \brief How lambda_b and lambda_d start.
enum class init_kind {
  constant,  ///< b = b_initial (default 0), d = d_initial: the paper's and PEFT's default
  random,    ///< b = 1, d ~ N(0, 1) from init_seed: PEFT's init_weights=False, a non-trivial start
};

/// \brief Settings of one adapted linear layer.
///
/// Paper ablations map to fields: d_initial = 1e-7, train_b = false (d only), train_d = false
/// (b only). A frozen vector keeps its initial value and gets no gradient.
struct adapter_options {
  index rank = 0;             ///< rank of this layer; 0 means the projection's rank
  double d_initial = 0.1;     ///< PEFT's `d_initial`
  double b_initial = 0.0;     ///< 0 makes the adapted layer start equal to the base layer
  init_kind init = init_kind::constant;  ///< how b and d start (see init_kind)
  std::uint64_t init_seed = 0;  ///< used by init_kind::random
  bool train_b = true;          ///< false freezes lambda_b (no gradient, optimizers skip it)
  bool train_d = true;          ///< false freezes lambda_d (no gradient, optimizers skip it)
  double dropout = 0.0;         ///< PEFT's `vera_dropout`, on the adapter input in training only
  bool fan_in_fan_out = false;  ///< W0 stored as in x out (GPT-2 Conv1D), so the delta is transposed
};

/// \brief Checks every setting: rank >= 0, finite d_initial and b_initial, dropout in [0, 1).
/// \throws value_error naming the first field out of range.
inline void validate(const adapter_options& options) {
  if (options.rank < 0) {
    throw value_error("adapter_options.rank: expected >= 0, got " + std::to_string(options.rank));
  }
  if (!std::isfinite(options.d_initial)) {
    throw value_error("adapter_options.d_initial: expected a finite value, got " +
                      std::to_string(options.d_initial));
  }
  if (!std::isfinite(options.b_initial)) {
    throw value_error("adapter_options.b_initial: expected a finite value, got " +
                      std::to_string(options.b_initial));
  }
  if (!(options.dropout >= 0.0 && options.dropout < 1.0)) {
    throw value_error("adapter_options.dropout: expected a probability in [0, 1), got " +
                      std::to_string(options.dropout));
  }
}

}  // namespace vera
