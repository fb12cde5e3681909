// SPDX-License-Identifier: Apache-2.0
// The instantiations that vera::precompiled compiles once, named `extern` so that a translation
// unit linking it does not compile them again. <vera/vera.hpp> includes this header when
// VERA_PRECOMPILED is defined, which linking vera::precompiled does.
#pragma once

#include <Eigen/Core>

#include "vera/backend/cpu/backward.hpp"
#include "vera/backend/cpu/forward.hpp"
#include "vera/backend/cpu/merge.hpp"
#include "vera/layer/linear.hpp"

#if VERA_ONEDNN || defined(EIGEN_USE_BLAS)
#error "vera::precompiled holds Eigen's GEMMs; with vera::onednn or EIGEN_USE_BLAS link vera::vera instead"
#endif

/// \brief The precompiled instantiations for scalar T, with dense column-major
///        Eigen::Matrix<T, Dynamic, Dynamic> operands and destinations (an Eigen::Matrix<T, Dynamic, 1>
///        bias or none): forward (inference and training), parameter gradients, input gradient,
///        delta weight, merged weight, merge, unmerge, safe_merge and vera::linear<T>. `KEYWORD` is
///        `extern` for the declarations and empty for the definitions in src/precompiled.cpp. Other
///        operand types (maps, blocks, row-major, bfloat16) are compiled where they are used, as
///        without the component.
#define VERA_PRECOMPILED_INSTANTIATIONS(KEYWORD, T)                                                      \
  KEYWORD template void vera::detail::evaluate<vera::exec::cpu, Eigen::Matrix<T, -1, -1>, Eigen::Matrix<T, -1, -1>, \
                                       Eigen::Matrix<T, -1, 1>, T, Eigen::Matrix<T, -1, -1>, void>(        \
      vera::exec::cpu,                                                                                   \
      const vera::detail::forward_expr<vera::exec::cpu, Eigen::Matrix<T, -1, -1>, Eigen::Matrix<T, -1, -1>,      \
                               Eigen::Matrix<T, -1, 1>, T>&,                                             \
      Eigen::Matrix<T, -1, -1>&, vera::assign_mode);                                                     \
  KEYWORD template void vera::detail::evaluate<vera::exec::cpu, Eigen::Matrix<T, -1, -1>, Eigen::Matrix<T, -1, -1>, \
                                       vera::no_bias_t, T, Eigen::Matrix<T, -1, -1>, void>(                \
      vera::exec::cpu,                                                                                   \
      const vera::detail::forward_expr<vera::exec::cpu, Eigen::Matrix<T, -1, -1>, Eigen::Matrix<T, -1, -1>,      \
                               vera::no_bias_t, T>&,                                                     \
      Eigen::Matrix<T, -1, -1>&, vera::assign_mode);                                                     \
  KEYWORD template void vera::detail::evaluate<vera::exec::cpu, Eigen::Matrix<T, -1, -1>, T, void>(                \
      vera::exec::cpu, const vera::detail::parameter_gradient_expr<vera::exec::cpu, Eigen::Matrix<T, -1, -1>, T>&, \
      vera::gradients<T>&, vera::assign_mode);                                                           \
  KEYWORD template void vera::detail::evaluate<vera::exec::cpu, Eigen::Matrix<T, -1, -1>, Eigen::Matrix<T, -1, -1>, T, \
                                       Eigen::Matrix<T, -1, -1>, void>(                                    \
      vera::exec::cpu,                                                                                   \
      const vera::detail::input_gradient_expr<vera::exec::cpu, Eigen::Matrix<T, -1, -1>, Eigen::Matrix<T, -1, -1>, T>&, \
      Eigen::Matrix<T, -1, -1>&, vera::assign_mode);                                                     \
  KEYWORD template void vera::detail::evaluate<vera::exec::cpu, T, Eigen::Matrix<T, -1, -1>, void>(                \
      vera::exec::cpu, const vera::detail::delta_weight_expr<vera::exec::cpu, T>&, Eigen::Matrix<T, -1, -1>&, T, T); \
  KEYWORD template void vera::merge<Eigen::Matrix<T, -1, -1>, T>(Eigen::MatrixBase<Eigen::Matrix<T, -1, -1>>&, \
                                                                 const vera::adapter<T>&, vera::workspace<T>*); \
  KEYWORD template void vera::unmerge<Eigen::Matrix<T, -1, -1>, T>(Eigen::MatrixBase<Eigen::Matrix<T, -1, -1>>&, \
                                                                   const vera::adapter<T>&, vera::workspace<T>*); \
  KEYWORD template void vera::safe_merge<Eigen::Matrix<T, -1, -1>, T>(                                    \
      Eigen::MatrixBase<Eigen::Matrix<T, -1, -1>>&, const vera::adapter<T>&, vera::workspace<T>*);        \
  KEYWORD template class vera::linear<T>;                                                                \
  KEYWORD template void vera::linear<T>::forward<Eigen::Matrix<T, -1, -1>, Eigen::Matrix<T, -1, -1>>(      \
      const Eigen::MatrixBase<Eigen::Matrix<T, -1, -1>>&, Eigen::MatrixBase<Eigen::Matrix<T, -1, -1>>&);  \
  KEYWORD template void vera::linear<T>::forward_train<Eigen::Matrix<T, -1, -1>, Eigen::Matrix<T, -1, -1>>( \
      const Eigen::MatrixBase<Eigen::Matrix<T, -1, -1>>&, Eigen::MatrixBase<Eigen::Matrix<T, -1, -1>>&);  \
  KEYWORD template void vera::linear<T>::backward<Eigen::Matrix<T, -1, -1>>(                              \
      const Eigen::MatrixBase<Eigen::Matrix<T, -1, -1>>&, vera::gradients<T>&, vera::assign_mode);        \
  KEYWORD template void vera::linear<T>::backward<Eigen::Matrix<T, -1, -1>, Eigen::Matrix<T, -1, -1>>(     \
      const Eigen::MatrixBase<Eigen::Matrix<T, -1, -1>>&, vera::gradients<T>&,                           \
      Eigen::MatrixBase<Eigen::Matrix<T, -1, -1>>&, vera::assign_mode);

VERA_PRECOMPILED_INSTANTIATIONS(extern, float)
VERA_PRECOMPILED_INSTANTIATIONS(extern, double)
