// SPDX-License-Identifier: Apache-2.0
// The CPU backend's one GEMM entry point: every product the CPU evaluators issue goes through it.
#pragma once

#include <type_traits>
#include <utility>

#include <Eigen/Core>

#include "vera/config.hpp"
#include "vera/core/shape.hpp"
#include "vera/expr/operand.hpp"

#if VERA_ONEDNN
#include "vera/backend/cpu/onednn.hpp"
#endif

namespace vera {

namespace detail {

template <class E>
using scalar_of = typename std::decay_t<E>::Scalar;

/// True for operands stored in bfloat16 (Eigen::bfloat16).
template <class E>
inline constexpr bool is_bfloat16 = std::is_same_v<scalar_of<E>, Eigen::bfloat16>;

}  // namespace detail

/// \brief The GEMM provider the CPU evaluators were compiled with: "onednn", "blas" (Eigen's
///        products routed to the system BLAS by EIGEN_USE_BLAS) or "eigen".
inline const char* gemm_provider() noexcept {
#if VERA_ONEDNN
  return "onednn";
#elif defined(EIGEN_USE_BLAS)
  return "blas";
#else
  return "eigen";
#endif
}

namespace detail::cpu {

// See vera::gemm below.
template <class Dst, class Lhs, class Rhs>
void gemm(Dst&& dst, const Lhs& lhs, const Rhs& rhs, bool accumulate) {
  static_assert(!vera::detail::is_bfloat16<Dst>, "vera::gemm: accumulate bfloat16 products in float");
  static_assert(vera::detail::is_bfloat16<Lhs> == vera::detail::is_bfloat16<Rhs>,
                "vera::gemm: both factors bfloat16, or neither");
  vera::detail::check_shape("vera::gemm rhs", lhs.cols(), rhs.cols(), rhs.rows(), rhs.cols());
  vera::detail::check_shape("vera::gemm destination", lhs.rows(), rhs.cols(), dst.rows(), dst.cols());
#if VERA_ONEDNN
  // A lazy factor is evaluated first, as Eigen's own GEMM does: the product then runs in the same
  // kernel, with the same bits, whatever form the caller gave it in.
  const auto plain = [](const auto& e) -> decltype(auto) {
    using E = std::decay_t<decltype(e)>;
    if constexpr (bool(Eigen::internal::traits<E>::Flags & Eigen::DirectAccessBit)) {
      return e;
    } else {
      return e.eval();
    }
  };
  if (onednn::try_gemm(dst, plain(lhs), plain(rhs), accumulate)) return;
#endif
  if constexpr (vera::detail::is_bfloat16<Lhs>) {
    // No bfloat16 kernel here (the Eigen provider, or a CPU without AVX-512 BF16/AMX): widen both
    // factors (exactly) into per-thread buffers that grow and are kept, then take the float path.
    using wide = vera::detail::scalar_of<Dst>;
    using buffer = Eigen::Matrix<wide, Eigen::Dynamic, Eigen::Dynamic>;
    static thread_local buffer lhs_wide, rhs_wide;
    const auto widen = [](const auto& from, buffer& to) {
      if (to.size() < from.size()) to.resize(from.size(), 1);
      Eigen::Map<buffer> view(to.data(), from.rows(), from.cols());
      view = from.template cast<wide>();
      return view;
    };
    gemm(dst, widen(lhs, lhs_wide), widen(rhs, rhs_wide), accumulate);
  } else if (accumulate) {
    dst.noalias() += lhs * rhs;
  } else {
    dst.noalias() = lhs * rhs;
  }
}

}  // namespace detail::cpu

/// \brief dst = lhs * rhs (`accumulate` false) or dst += lhs * rhs through the GEMM seam every CPU
///        evaluator uses: the provider vera was compiled with (see gemm_provider()), no temporary
///        for the result, float32 accumulation for bfloat16 factors.
///
/// For a program's own products next to vera's layers (attention, feed-forward), so that they run
/// in the same kernels. With oneDNN, float32 and bfloat16 operands in plain strided memory
/// (matrices, maps, blocks and their transposes) run in oneDNN's matmul, one cached primitive per
/// shape and layout; lazy operands, double and other scalar types use Eigen. bfloat16 factors
/// need a float destination; where no bfloat16 kernel runs them (the Eigen provider, or oneDNN
/// on a CPU without AVX-512 BF16 or AMX) they are widened to float into per-thread buffers and
/// multiplied in float32.
/// \throws shape_error when rhs has not lhs.cols() rows or dst is not lhs.rows() x rhs.cols();
///         aliasing_error when dst shares memory with lhs or rhs (operands with direct access);
///         nothing is written then.
template <class Dst, class Lhs, class Rhs>
void gemm(Dst&& dst, const Lhs& lhs, const Rhs& rhs, bool accumulate = false) {
  vera::detail::check_no_alias("vera::gemm", dst, "lhs", lhs);
  vera::detail::check_no_alias("vera::gemm", dst, "rhs", rhs);
  detail::cpu::gemm(std::forward<Dst>(dst), lhs, rhs, accumulate);
}

}  // namespace vera
