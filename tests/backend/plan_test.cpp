// SPDX-License-Identifier: Apache-2.0
// The CPU backend's plan: each decision at its boundary, on its own, without computing anything.
#include <array>

#include <catch2/catch.hpp>

#include "vera/backend/cpu/plan.hpp"

namespace {

using vera::order;
using vera::detail::cpu::plan;
using vera::detail::cpu::plan_for;
using vera::detail::cpu::plan_request;
using vera::detail::cpu::product_kind;
using vera::detail::cpu::request_for;

plan forward_plan(vera::index rows, vera::index in, vera::index out, vera::index rank, bool row_major,
                  int threads) {
  plan_request r = request_for(product_kind::forward, {rows, in, out, rank});
  r.row_major_output = row_major;
  r.gemm_threads = threads;
  return plan_for(r);
}

}  // namespace

TEST_CASE("plan: the order is the cost model's, merged only where it is valid", "[plan]") {
  for (const product_kind kind : {product_kind::forward, product_kind::input_gradient}) {
    for (const vera::index rows : {1, 40, 41, 500, 600, 4096}) {
      for (const bool reused : {false, true}) {
        plan_request r = request_for(kind, {rows, 64, 64, 8});
        r.workspace_reused = reused;
        const vera::detail::order_costs costs = kind == product_kind::forward
                                            ? vera::detail::forward_costs(r.extents, false, reused)
                                            : vera::detail::input_gradient_costs(r.extents, reused);
        CHECK(plan_for(r).chosen == vera::detail::choose_order(order::automatic, costs, true));
        r.merged_valid = false;  // dropout on the adapter input
        CHECK(plan_for(r).chosen == order::low_rank);
        r.merged_valid = true;
        r.requested = order::merged;
        CHECK(plan_for(r).chosen == order::merged);
        r.requested = order::low_rank;
        CHECK(plan_for(r).chosen == order::low_rank);
      }
    }
  }
  // Many rows through a small layer: building W0 + ΔW once is cheaper than two thin GEMMs per row.
  CHECK(plan_for(request_for(product_kind::forward, {1 << 20, 64, 64, 8})).chosen == order::merged);
  CHECK(plan_for(request_for(product_kind::parameter_gradients, {1 << 20, 64, 64, 8})).chosen ==
        order::low_rank);
}

TEST_CASE("plan: thin-side scales while n (rank + out) < out x rank", "[plan]") {
  // out = 768, rank = 256: out x rank = 196608 and rank + out = 1024, so up to 191 rows.
  for (const product_kind kind : {product_kind::forward, product_kind::input_gradient}) {
    plan_request r = request_for(kind, {191, 768, 768, 256}, order::low_rank);
    CHECK(plan_for(r).thin_side_scales);
    r.extents.rows = 192;
    CHECK_FALSE(plan_for(r).thin_side_scales);
    r.extents.rows = 1;
    r.requested = order::merged;  // the merged order folds the scales into the weight
    CHECK_FALSE(plan_for(r).thin_side_scales);
  }
  CHECK_FALSE(plan_for(request_for(product_kind::parameter_gradients, {4, 768, 768, 256})).thin_side_scales);
}

TEST_CASE("plan: the forward is issued transposed for 2-64 rows into a column-major Y on threads",
          "[plan]") {
  CHECK(forward_plan(2, 768, 768, 256, false, 2).transposed);
  CHECK(forward_plan(64, 768, 768, 256, false, 2).transposed);
  CHECK_FALSE(forward_plan(1, 768, 768, 256, false, 2).transposed);
  CHECK_FALSE(forward_plan(65, 768, 768, 256, false, 2).transposed);
  CHECK_FALSE(forward_plan(16, 768, 768, 256, true, 2).transposed);   // row-major Y
  CHECK_FALSE(forward_plan(16, 768, 768, 256, false, 1).transposed);  // one thread
  CHECK_FALSE(forward_plan(16, 768, 768, 256, false, 0).transposed);  // Eigen's GEMM, no count set
  plan_request r = request_for(product_kind::input_gradient, {16, 768, 768, 256});
  r.gemm_threads = 2;
  CHECK_FALSE(plan_for(r).transposed);  // the input gradient has no transposed arrangement
}

TEST_CASE("plan: parameter gradients of one row take two matrix-vector products", "[plan]") {
  CHECK(plan_for(request_for(product_kind::parameter_gradients, {1, 768, 768, 256})).single_row);
  CHECK_FALSE(plan_for(request_for(product_kind::parameter_gradients, {2, 768, 768, 256})).single_row);
  CHECK_FALSE(plan_for(request_for(product_kind::forward, {1, 768, 768, 256})).single_row);
}

TEST_CASE("plan: siblings share the joint order choice and plan the rest one by one", "[plan]") {
  const std::array<vera::detail::product_extents, 3> three{{{16, 768, 768, 256}, {16, 768, 768, 256}, {16, 768, 3072, 256}}};
  const auto plans = vera::detail::cpu::plan_siblings(product_kind::forward, order::automatic, three, false, true,
                                              true, {false, true, false}, 2);
  const auto orders = vera::detail::choose_sibling_orders(order::automatic, three, false, true, true);
  for (std::size_t i = 0; i < 3; ++i) {
    CHECK(plans[i].chosen == orders[i]);
    plan_request r = request_for(product_kind::forward, three[i], orders[i]);
    r.row_major_output = i == 1;
    r.gemm_threads = 2;
    const plan single = plan_for(r);
    CHECK(plans[i].thin_side_scales == single.thin_side_scales);
    CHECK(plans[i].transposed == single.transposed);
  }
  CHECK(plans[0].transposed);
  CHECK_FALSE(plans[1].transposed);  // its destination is row-major
  const auto dropout = vera::detail::cpu::plan_siblings(product_kind::input_gradient, order::merged, three, false,
                                                true, false, {false, false, false}, 1);
  for (const plan& p : dropout) CHECK(p.chosen == order::low_rank);
}

TEST_CASE("plan: mixed batches go run by run from a mean run of 8 rows", "[plan]") {
  using vera::detail::cpu::passes_by_runs;
  CHECK(passes_by_runs(64, 8));        // runs of 8 rows on average
  CHECK_FALSE(passes_by_runs(63, 8));  // just under 8
  CHECK(passes_by_runs(512, 1));       // one adapter for the whole batch
  CHECK_FALSE(passes_by_runs(512, 512));  // shuffled rows: runs of one
  CHECK(passes_by_runs(0, 0));
}
