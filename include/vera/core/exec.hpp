// SPDX-License-Identifier: Apache-2.0
// Execution policies: empty tags that pick a backend at compile time.
#pragma once

#include <type_traits>

#include "vera/core/vocabulary.hpp"

namespace vera::exec {

/// \brief Host backend: Eigen's vectorised GEMM plus fused loops for the elementwise parts.
struct cpu {};

/// \brief GPU backend. `vera::forward(exec::cuda{}, ...)` and the other front-end calls build
///        device expressions over vera::cuda views when <vera/cuda.hpp> is included; their
///        evaluators live there. The Eigen front-end's host expressions cannot use it.
struct cuda {};

/// \brief The policy used when a call names none.
using default_policy = cpu;

/// \brief True for cpu and any tag derived from it (e.g. an ISA-specific refinement), which then
///        falls back to the generic CPU evaluators where it has no specialisation of its own.
template <class Exec>
inline constexpr bool is_cpu_policy = std::is_base_of_v<cpu, Exec>;

/// \brief True for cuda and any tag derived from it.
template <class Exec>
inline constexpr bool is_cuda_policy = std::is_base_of_v<cuda, Exec>;

}  // namespace vera::exec

namespace vera {

namespace detail {

template <class>
inline constexpr bool dependent_false = false;

/// \brief Chosen for a policy that has no evaluator for an expression: a readable compile error
///        instead of an overload-resolution failure deep in a kernel.
template <class Exec, class Expr, class... Rest,
          std::enable_if_t<!exec::is_cpu_policy<Exec>, int> = 0>
void evaluate(Exec, const Expr&, Rest&&...) {
  static_assert(dependent_false<Exec>,
                "vera: this execution policy has no evaluator for Eigen host operands; "
                "exec::cuda works on device views from <vera/cuda.hpp>");
}

}  // namespace detail

}  // namespace vera
