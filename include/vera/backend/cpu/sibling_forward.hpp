// SPDX-License-Identifier: Apache-2.0
// CPU evaluator of the sibling-group forward: one P = drop(X) A^T, then each sibling's product.
#pragma once

#include <array>
#include <tuple>

#include <Eigen/Core>

#include "vera/backend/cpu/bfloat16.hpp"
#include "vera/backend/cpu/common.hpp"
#include "vera/backend/cpu/forward.hpp"
#include "vera/backend/cpu/gemm.hpp"
#include "vera/backend/cpu/plan.hpp"
#include "vera/expr/cost.hpp"
#include "vera/expr/sibling_forward.hpp"

namespace vera {

namespace detail::cpu {

/// Each sibling's extents, for the group cost model.
template <class Group>
std::array<vera::detail::product_extents, Group::size> sibling_extents(const Group& group, index rows) {
  std::array<vera::detail::product_extents, Group::size> extents{};
  detail::for_each_index<Group::size>([&](auto i) {
    extents[i] = extents_of(rows, group.template member<decltype(i)::value>().layer());
  });
  return extents;
}

}  // namespace detail::cpu

namespace detail {

/// \brief Evaluates a sibling-group forward into one destination per sibling on the CPU.
template <class Exec, class XD, class Group, class... Dst, class = std::enable_if_t<exec::is_cpu_policy<Exec>>>
void evaluate(Exec, const detail::sibling_forward_expr<Exec, XD, Group>& e, std::tuple<Dst&...> ys, assign_mode mode) {
  using T = typename Group::scalar;
  using matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
  const Group& group = e.group();
  const adapter<T>& lead = group.lead();
  // Evaluate an expression-valued X once: it feeds every sibling.
  const typename Eigen::internal::nested_eval<std::decay_t<decltype(e.x())>, 4>::type x(e.x());
  detail::cpu::scratch<T> scratch(e.scratch());
  workspace<T>& ws = scratch.get();

  if constexpr (detail::is_bfloat16<XD>) {
    // Checked before a context is touched.
    detail::cpu::bfloat16_path::require_low_rank("vera::forward (siblings)", e.requested_order());
  }
  sibling_context<T>* kept = e.kept_context();
  forward_context<T>* ctx = kept != nullptr ? &kept->begin_step(Group::size) : e.context();
  const double dropout = ctx != nullptr ? group.dropout() : 0.0;
  if constexpr (detail::is_bfloat16<XD>) {
    // bfloat16 storage: the low-rank order only, P in float32 once, each sibling as the
    // single-layer bfloat16 path computes it (bit for bit, without dropout).
    const index rows = x.rows();
    float* p_data = ctx != nullptr ? ctx->begin_step(rows, lead.rank(), dropout).data()
                                   : ws.get(detail::cpu::slot_thin, rows, lead.rank()).data();
    Eigen::Map<Eigen::MatrixXf> p(p_data, rows, lead.rank());
    detail::cpu::bfloat16_path::project(x, lead, ctx != nullptr ? &ctx->mask_key() : nullptr, p, ws);
    detail::for_each_index<Group::size>([&](auto i) {
      constexpr std::size_t I = decltype(i)::value;
      const auto& member = group.template member<I>();
      const adapter<float>& ad = member.layer();
      Eigen::MatrixXf* q = kept != nullptr ? &kept->kept_buffer(I, rows, ad.out_features()) : nullptr;
      detail::cpu::bfloat16_path::adapted_product(x, p, member.w0(), member.bias(), ad, std::get<I>(ys), mode, ws, q);
    });
    if (ctx != nullptr) ctx->finish_step();
    if (kept != nullptr) kept->finish_step();
  } else {
    // Keeping Q_i means running the low-rank order.
    const auto plans = detail::cpu::plan_siblings(detail::cpu::product_kind::forward, e.requested_order(),
                                          detail::cpu::sibling_extents(group, x.rows()), ctx != nullptr,
                                          scratch.reused(), dropout == 0.0 && kept == nullptr,
                                          {static_cast<bool>(std::decay_t<Dst>::IsRowMajor)...}, detail::cpu::planning_threads());
    bool any_low_rank = false;
    for (const detail::cpu::plan& how : plans) any_low_rank = any_low_rank || how.chosen == order::low_rank;

    // P is needed for backward (training) and by every low-rank sibling: computed once.
    T* p_data = nullptr;
    if (ctx != nullptr) {
      p_data = ctx->begin_step(x.rows(), lead.rank(), dropout).data();
    } else if (any_low_rank) {
      p_data = ws.get(detail::cpu::slot_thin, x.rows(), lead.rank()).data();
    }
    // Not p_data != nullptr: an empty batch gets a null pointer, yet P must be 0 x rank.
    const bool has_p = ctx != nullptr || any_low_rank;
    Eigen::Map<matrix> p(p_data, has_p ? x.rows() : 0, has_p ? lead.rank() : 0);
    if (has_p) {
      const dropout_key* key = ctx != nullptr ? &ctx->mask_key() : nullptr;
      detail::cpu::project_input(x, lead.a(), key, p, ws);
    }

    detail::for_each_index<Group::size>([&](auto i) {
      constexpr std::size_t I = decltype(i)::value;
      const auto& member = group.template member<I>();
      const adapter<T>& ad = member.layer();
      auto& y = std::get<I>(ys);
      if (kept == nullptr) {
        detail::cpu::adapted_product(x, p, member.w0(), member.bias(), ad, plans[I], y, mode, ws);
        return;
      }
      // Q_i = (P Λd_i) B_i^T is kept for backward; Λb_i is applied on the way into Y_i.
      auto& q = kept->kept_buffer(I, x.rows(), ad.out_features());
      if (plans[I].thin_side_scales) {
        detail::cpu::thin_q(p, ad, ws, q);  // small batches: Λd on the thin side
      } else {
        detail::cpu::gemm(q, p, detail::cpu::half_scaled_b(ad, /*lambda_d=*/true, ws).transpose(), false);
      }
      detail::cpu::initialise_output(y, member.bias(), mode);
      detail::cpu::with_weight(ad, member.w0(), [&](const auto& w) { detail::cpu::gemm(y, x, w.transpose(), true); });
      y += q * ad.lambda_b().asDiagonal();
    });
    if (ctx != nullptr) ctx->finish_step();
    if (kept != nullptr) kept->finish_step();
  }
}

}  // namespace detail

}  // namespace vera
