// SPDX-License-Identifier: Apache-2.0
// Optimizer settings and their range checks, shared by the host optimizers (vera/optim.hpp) and
// the device steps (vera/cuda.hpp). Needs nothing but the standard library.
#pragma once

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "vera/core/error.hpp"

namespace vera::optim {

/// \brief Settings of sgd (and of vera::cuda::sgd_step); the defaults are plain SGD at lr 0.01.
struct sgd_options {
  double lr = 0.01;  ///< learning rate, >= 0
  double momentum = 0.0;  ///< >= 0; 0 keeps no momentum buffer
  double dampening = 0.0;  ///< in [0, 1]
  /// L2 penalty added to the gradient (coupled, as PyTorch's SGD), for parameters with decay.
  double weight_decay = 0.0;
  bool nesterov = false;  ///< needs momentum > 0 and dampening 0
};

/// \brief Settings of adamw (and of vera::cuda::adamw_step); the defaults are PyTorch's.
struct adamw_options {
  double lr = 1e-3;  ///< learning rate, >= 0
  double beta1 = 0.9;  ///< first-moment decay, in [0, 1)
  double beta2 = 0.999;  ///< second-moment decay, in [0, 1)
  double eps = 1e-8;  ///< added to the denominator, > 0
  /// Decoupled: p *= 1 - lr * weight_decay before the Adam step, for parameters with decay.
  double weight_decay = 1e-2;
};

namespace detail {

/// Shortest decimal that reads back as `value` (up to 17 digits): "0", "1", "0.1", "1e-08".
inline std::string format_setting(double value) {
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  char text[32];
  for (int digits = 1; digits <= 17; ++digits) {
    std::snprintf(text, sizeof text, "%.*g", digits, value);
    if (std::isnan(value) || std::strtod(text, nullptr) == value) break;
  }
  return text;
}

/// Throws value_error "<who>: <what> must be in [low, high), got <value>" unless `value` is
/// finite and inside the interval (each end closed or open as given).
inline void check_rate(const char* who, const char* what, double value, double low,
                       bool low_inclusive, double high, bool high_inclusive) {
  const bool above = low_inclusive ? value >= low : value > low;
  const bool below = high_inclusive ? value <= high : value < high;
  if (!std::isfinite(value) || !above || !below) {
    throw value_error(std::string(who) + ": " + what + " must be in " + (low_inclusive ? "[" : "(") +
                      format_setting(low) + ", " + format_setting(high) + (high_inclusive ? "]" : ")") +
                      ", got " + format_setting(value));
  }
}

/// The learning rate's check, shared by the settings' checks and the optimizers' set_lr.
inline void check_lr(const char* who, double lr) {
  check_rate(who, "lr", lr, 0.0, true, HUGE_VAL, false);
}

}  // namespace detail

/// \brief Checks every setting of `o`; `who` names the caller in the message.
/// \throws value_error for a setting out of range or not finite, or nesterov without
///         momentum > 0 and dampening 0.
inline void validate(const sgd_options& o, const char* who) {
  detail::check_lr(who, o.lr);
  detail::check_rate(who, "momentum", o.momentum, 0.0, true, HUGE_VAL, false);
  detail::check_rate(who, "dampening", o.dampening, 0.0, true, 1.0, true);
  detail::check_rate(who, "weight_decay", o.weight_decay, 0.0, true, HUGE_VAL, false);
  if (o.nesterov && (o.momentum <= 0.0 || o.dampening != 0.0)) {
    throw value_error(std::string(who) + ": nesterov needs momentum > 0 and dampening 0");
  }
}

/// \brief Checks every setting of `o`; `who` names the caller in the message.
/// \throws value_error for a setting out of range or not finite.
inline void validate(const adamw_options& o, const char* who) {
  detail::check_lr(who, o.lr);
  detail::check_rate(who, "beta1", o.beta1, 0.0, true, 1.0, false);
  detail::check_rate(who, "beta2", o.beta2, 0.0, true, 1.0, false);
  detail::check_rate(who, "eps", o.eps, 0.0, false, HUGE_VAL, false);
  detail::check_rate(who, "weight_decay", o.weight_decay, 0.0, true, HUGE_VAL, false);
}

}  // namespace vera::optim
