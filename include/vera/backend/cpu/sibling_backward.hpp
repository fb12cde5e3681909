// SPDX-License-Identifier: Apache-2.0
// CPU evaluator of a sibling group's grad_X: each sibling's G_i W_i, one GEMM against A.
#pragma once

#include <tuple>

#include <Eigen/Core>

#include "vera/backend/cpu/backward.hpp"
#include "vera/backend/cpu/common.hpp"
#include "vera/backend/cpu/gemm.hpp"
#include "vera/backend/cpu/plan.hpp"
#include "vera/backend/cpu/sibling_forward.hpp"
#include "vera/expr/sibling_backward.hpp"

namespace vera {

namespace detail {

/// \brief grad_X = sum_i G_i W_i + mask ⊙ ((sum_i G_i Λb_i B_i Λd_i) A) / (1 - p): the thin
///        n x rank terms of the low-rank siblings are summed first, then projected back once.
template <class Exec, class Group, class... GD, class Dst, class = std::enable_if_t<exec::is_cpu_policy<Exec>>>
void evaluate(Exec, const detail::sibling_input_gradient_expr<Exec, Group, GD...>& e, Dst& dx, assign_mode mode) {
  using T = typename Group::scalar;
  const Group& group = e.group();
  const auto& upstream = e.upstream();

  const index rows = e.rows();
  const dropout_key& key = e.context().mask_key();
  detail::cpu::scratch<T> scratch(e.scratch());
  workspace<T>& ws = scratch.get();
  if constexpr (std::is_same_v<typename Group::storage, Eigen::bfloat16>) {
    detail::cpu::bfloat16_path::require_low_rank("vera::input_gradient (siblings)", e.requested_order());
    // The thin terms of all siblings summed in float32, rounded once, projected back once.
    auto acc = detail::cpu::bfloat16_path::accumulator(dx, mode, ws);
    auto t = ws.get(detail::cpu::slot_thin, rows, group.rank());
    detail::for_each_index<Group::size>([&](auto i) {
      constexpr std::size_t I = decltype(i)::value;
      const auto& member = group.template member<I>();
      detail::cpu::bfloat16_path::input_gradient_terms(std::get<I>(upstream), member.w0(), member.layer(), acc, t,
                                                       I == 0 ? assign_mode::overwrite : assign_mode::accumulate, ws);
    });
    detail::cpu::bfloat16_path::add_back_projection(t, group.lead(), key, acc, ws);
    dx = acc.template cast<typename Dst::Scalar>();
  } else {
    const auto plans = detail::cpu::plan_siblings(detail::cpu::product_kind::input_gradient, e.requested_order(),
                                          detail::cpu::sibling_extents(group, rows), /*shared_paid=*/false,
                                          scratch.reused(), key.probability == 0.0,
                                          std::array<bool, Group::size>{}, detail::cpu::planning_threads());
    bool any_low_rank = false;
    for (const detail::cpu::plan& how : plans) any_low_rank = any_low_rank || how.chosen == order::low_rank;

    if (mode == assign_mode::overwrite) dx.setZero();
    auto t = ws.get(detail::cpu::slot_thin, any_low_rank ? rows : 0, group.rank());
    assign_mode t_mode = assign_mode::overwrite;
    detail::for_each_index<Group::size>([&](auto i) {
      constexpr std::size_t I = decltype(i)::value;
      const auto& member = group.template member<I>();
      detail::cpu::input_gradient_terms(std::get<I>(upstream), member.w0(), member.layer(), plans[I], dx, t, t_mode, ws);
      if (plans[I].chosen == order::low_rank) t_mode = assign_mode::accumulate;
    });
    if (any_low_rank) detail::cpu::add_back_projection(t, group.lead().a(), key, dx, ws);
  }
}

/// \brief The one-pass group backward from a context that kept Q_i (see sibling_backward_expr).
template <class Exec, class Group, class... GD, class DX, class... Out,
          class = std::enable_if_t<exec::is_cpu_policy<Exec>>>
void evaluate(Exec, const detail::sibling_backward_expr<Exec, Group, GD...>& e, DX& dx, std::tuple<Out&...> grads,
              assign_mode mode) {
  using T = typename Group::scalar;
  const Group& group = e.group();
  const auto& upstream = e.upstream();
  const forward_context<T>& shared = e.context().projection();
  const auto& p = shared.projected();
  detail::cpu::scratch<T> scratch(e.scratch());
  workspace<T>& ws = scratch.get();

  if constexpr (std::is_same_v<typename Group::storage, Eigen::bfloat16>) {
    auto acc = detail::cpu::bfloat16_path::accumulator(dx, mode, ws);
    auto s = ws.get(detail::cpu::slot_thin, p.rows(), p.cols());
    detail::for_each_index<Group::size>([&](auto i) {
      constexpr std::size_t I = decltype(i)::value;
      const auto& member = group.template member<I>();
      gradients<float>& out = std::get<I>(grads);
      if (mode == assign_mode::overwrite) out.set_zero();
      detail::cpu::bfloat16_path::sibling_backward_terms(std::get<I>(upstream), member.w0(), member.layer(),
                                                         e.context().kept(I), p, out, acc, s,
                                                         I == 0 ? assign_mode::overwrite : assign_mode::accumulate, ws);
    });
    detail::cpu::bfloat16_path::add_back_projection(s, group.lead(), shared.mask_key(), acc, ws);
    dx = acc.template cast<typename DX::Scalar>();
  } else {
    if (mode == assign_mode::overwrite) dx.setZero();
    auto s = ws.get(detail::cpu::slot_thin, p.rows(), p.cols());
    detail::for_each_index<Group::size>([&](auto i) {
      constexpr std::size_t I = decltype(i)::value;
      const auto& member = group.template member<I>();
      const adapter<T>& ad = member.layer();
      const auto& g = std::get<I>(upstream);
      gradients<T>& out = std::get<I>(grads);
      if (mode == assign_mode::overwrite) out.set_zero();
      if (ad.options().train_b) out.lambda_b.noalias() += g.cwiseProduct(e.context().kept(I)).colwise().sum().transpose();
      auto u = ws.get(detail::cpu::slot_weight, p.rows(), p.cols());
      const auto request = detail::cpu::request_for(detail::cpu::product_kind::input_gradient,
                                            detail::cpu::extents_of(p.rows(), ad), order::low_rank);
      if (detail::cpu::plan_for(request).thin_side_scales) {
        detail::cpu::thin_t(g, ad, ws, u);  // U = (G Λb) B, small batches: Λb on the thin side
      } else {
        detail::cpu::gemm(u, g, detail::cpu::half_scaled_b(ad, /*lambda_d=*/false, ws), false);  // U = G Λb B
      }
      if (ad.options().train_d) out.lambda_d.noalias() += u.cwiseProduct(p).colwise().sum().transpose();
      if constexpr (I == 0) {
        s = u * ad.lambda_d().asDiagonal();
      } else {
        s += u * ad.lambda_d().asDiagonal();
      }
      detail::cpu::with_weight(ad, member.w0(), [&](const auto& w) { detail::cpu::gemm(dx, g, w, true); });
    });
    detail::cpu::add_back_projection(s, group.lead().a(), shared.mask_key(), dx, ws);
  }
}

}  // namespace detail

}  // namespace vera
