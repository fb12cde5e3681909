// SPDX-License-Identifier: Apache-2.0
// Tests of the mixed backward: against the core looped per adapter, and by finite differences.
#include <catch2/catch.hpp>

#include <algorithm>
#include <sstream>
#include <string>
#include <vector>

#include <vera/multi.hpp>

#include "loop_reference.hpp"

using multi_test::matrix;
using multi_test::relative_gap;
using multi_test::shape;
using multi_test::vec;

using multi_test::all_layouts;
using multi_test::layout;
using multi_test::name;

namespace {

// Six adapters: adapters[1] gets no rows, [2] freezes b, [3] freezes d, [4] is disabled,
// [5] freezes both; scales differ.
template <class T>
std::vector<vera::adapter_id> populate(vera::adapter_set<T>& set, std::uint32_t seed, double dropout) {
  std::vector<vera::adapter_id> ids;
  for (int k = 0; k < 6; ++k) {
    vera::adapter_options options = multi_test::random_options(seed + static_cast<std::uint64_t>(k));
    options.fan_in_fan_out = set.fan_in_fan_out();
    options.dropout = k % 2 == 0 ? dropout : 0.0;
    options.train_b = k != 2 && k != 5;
    options.train_d = k != 3 && k != 5;
    ids.push_back(set.add(options));
    multi_test::perturb_b(set, ids.back(), seed + 50 + static_cast<std::uint32_t>(k));
  }
  set.set_scale(ids[0], T(1.5));
  set.set_scale(ids[3], T(-0.75));
  set.disable(ids[4]);
  return ids;
}

std::vector<int> assign(layout l, vera::index rows, const std::vector<vera::adapter_id>& adapters,
                        std::uint32_t seed) {
  std::vector<vera::adapter_id> used = adapters;
  used.erase(used.begin() + 1);
  std::vector<int> ids = multi_test::random_ids(rows, used, seed);
  switch (l) {
    case layout::random: break;
    case layout::grouped: std::sort(ids.begin(), ids.end()); break;
    case layout::one_adapter: std::fill(ids.begin(), ids.end(), adapters[0]); break;
    case layout::one_adapter_and_base:
      for (int& id : ids) id = id == vera::no_adapter ? id : adapters[0];
      break;
    case layout::base_only: std::fill(ids.begin(), ids.end(), vera::no_adapter); break;
  }
  return ids;
}

template <class T>
matrix<T> weight(const vera::adapter_set<T>& set, std::uint32_t seed) {
  return set.fan_in_fan_out() ? multi_test::random_matrix<T>(set.in_features(), set.out_features(), seed)
                              : multi_test::random_matrix<T>(set.out_features(), set.in_features(), seed);
}

std::string describe(layout l, bool fan_in_fan_out, double dropout) {
  std::ostringstream os;
  os << name(l) << ", fan_in_fan_out " << fan_in_fan_out << ", dropout " << dropout;
  return os.str();
}

}  // namespace

TEMPLATE_TEST_CASE("mixed gradients match the core's gradients looped over each adapter's rows",
                   "[multi][backward]", float, double) {
  using T = TestType;
  const shape s{131, 23, 19, 11};
  const double tol = multi_test::tolerance<T>();
  std::uint32_t seed = 200;
  for (bool fan_in_fan_out : {false, true}) {
    for (double dropout : {0.0, 0.25}) {
      for (layout l : {layout::random, layout::grouped, layout::one_adapter, layout::one_adapter_and_base,
                       layout::base_only}) {
        INFO(describe(l, fan_in_fan_out, dropout));
        vera::adapter_set<T> set(multi_test::make_projection<T>(s), s.in, s.out, {s.rank, fan_in_fan_out});
        const auto adapters = populate(set, seed++, dropout);
        const std::vector<int> ids = assign(l, s.rows, adapters, seed++);
        const matrix<T> x = multi_test::random_matrix<T>(s.rows, s.in, seed++);
        const matrix<T> w0 = weight(set, seed++);
        const vec<T> bias = multi_test::random_matrix<T>(s.out, 1, seed++);
        const matrix<T> g = multi_test::random_matrix<T>(s.rows, s.out, seed++);

        vera::mixed_context<T> ctx(/*dropout_seed=*/seed++);
        vera::mixed_workspace<T> ws;
        const matrix<T> y = vera::mixed_forward(x, w0, bias, set, ids).train(ctx).using_workspace(ws);
        const auto expected = multi_test::loop_reference<T>(set, x, w0, &bias, ids, g, &ctx.mask_key());
        CHECK(relative_gap(y, expected.y) <= tol);

        // Overwrite writes every column, including those of adapters without rows.
        vera::mixed_gradients<T> grads(set);
        grads.lambda_b.setConstant(T(7));
        grads.lambda_d.setConstant(T(7));
        grads = vera::mixed_parameter_gradients(g, set, ctx).using_workspace(ws);
        CHECK(relative_gap(grads.lambda_b, expected.grad_b) <= tol);
        CHECK(relative_gap(grads.lambda_d, expected.grad_d) <= tol);

        const matrix<T> dx = vera::mixed_input_gradient(g, w0, set, ctx).using_workspace(ws);
        CHECK(relative_gap(dx, expected.dx) <= tol);

        // The fused call gives the same numbers, with or without a workspace.
        vera::mixed_gradients<T> fused;
        matrix<T> dx_fused;
        vera::mixed_backward(g, w0, set, ctx).eval_to(fused, dx_fused);
        CHECK(relative_gap(fused.lambda_b, expected.grad_b) <= tol);
        CHECK(relative_gap(fused.lambda_d, expected.grad_d) <= tol);
        CHECK(relative_gap(dx_fused, expected.dx) <= tol);
        vera::mixed_backward(g, w0, set, ctx).using_workspace(ws).eval_to(fused, dx_fused);
        CHECK(relative_gap(dx_fused, expected.dx) <= tol);
      }
    }
  }
}

TEMPLATE_TEST_CASE("accumulating adds to the adapters present and leaves every other column alone",
                   "[multi][backward]", float, double) {
  using T = TestType;
  const shape s;
  const double tol = multi_test::tolerance<T>();
  for (layout l : {layout::random, layout::grouped, layout::one_adapter}) {
    INFO(name(l));
    vera::adapter_set<T> set(multi_test::make_projection<T>(s), s.in, s.out, {s.rank});
    const auto adapters = populate(set, 300, 0.0);
    const std::vector<int> ids = assign(l, s.rows, adapters, 301);
    const matrix<T> x = multi_test::random_matrix<T>(s.rows, s.in, 302);
    const matrix<T> w0 = weight(set, 303);
    const matrix<T> g = multi_test::random_matrix<T>(s.rows, s.out, 304);
    vera::mixed_context<T> ctx;
    const matrix<T> y = vera::mixed_forward(x, w0, vera::no_bias, set, ids).train(ctx);
    const auto expected = multi_test::loop_reference<T>(set, x, w0, nullptr, ids, g);

    vera::mixed_gradients<T> grads(set);
    const matrix<T> start_b = multi_test::random_matrix<T>(s.out, set.columns(), 305);
    const matrix<T> start_d = multi_test::random_matrix<T>(s.rank, set.columns(), 306);
    grads.lambda_b = start_b;
    grads.lambda_d = start_d;
    grads += vera::mixed_parameter_gradients(g, set, ctx);
    CHECK(relative_gap(grads.lambda_b, matrix<T>(start_b + expected.grad_b)) <= tol);
    CHECK(relative_gap(grads.lambda_d, matrix<T>(start_d + expected.grad_d)) <= tol);
    for (vera::index c = 0; c < set.columns(); ++c) {
      if (expected.grad_b.col(c).isZero()) CHECK(grads.lambda_b.col(c) == start_b.col(c));
      if (expected.grad_d.col(c).isZero()) CHECK(grads.lambda_d.col(c) == start_d.col(c));
    }

    const matrix<T> dx_start = multi_test::random_matrix<T>(s.rows, s.in, 307);
    matrix<T> dx = dx_start;
    vera::mixed_input_gradient(g, w0, set, ctx).add_to(dx);
    CHECK(relative_gap(dx, matrix<T>(dx_start + expected.dx)) <= tol);

    grads.lambda_b = start_b;
    grads.lambda_d = start_d;
    dx = dx_start;
    vera::mixed_backward(g, w0, set, ctx).eval_to(grads, dx, vera::assign_mode::accumulate);
    CHECK(relative_gap(grads.lambda_b, matrix<T>(start_b + expected.grad_b)) <= tol);
    CHECK(relative_gap(dx, matrix<T>(dx_start + expected.dx)) <= tol);
  }
}

TEMPLATE_TEST_CASE("mixed gradients scale to hundreds of adapters", "[multi][backward]", float, double) {
  using T = TestType;
  const shape s{257, 23, 19, 11};
  vera::adapter_set<T> set(multi_test::make_projection<T>(s), s.in, s.out, {s.rank});
  std::vector<vera::adapter_id> adapters;
  for (int k = 0; k < 400; ++k) {
    adapters.push_back(set.add(multi_test::random_options(static_cast<std::uint64_t>(k))));
    multi_test::perturb_b(set, adapters.back(), static_cast<std::uint32_t>(k));
    set.set_scale(adapters.back(), T(0.5) + T(k % 5) / T(4));
  }
  const std::vector<int> ids = multi_test::random_ids(s.rows, adapters, 9);
  const matrix<T> x = multi_test::random_matrix<T>(s.rows, s.in, 10);
  const matrix<T> w0 = multi_test::random_matrix<T>(s.out, s.in, 11);
  const matrix<T> g = multi_test::random_matrix<T>(s.rows, s.out, 12);
  vera::mixed_context<T> ctx;
  const matrix<T> y = vera::mixed_forward(x, w0, vera::no_bias, set, ids).train(ctx);
  const auto expected = multi_test::loop_reference<T>(set, x, w0, nullptr, ids, g);
  vera::mixed_gradients<T> grads;
  matrix<T> dx;
  vera::mixed_backward(g, w0, set, ctx).eval_to(grads, dx);
  CHECK(relative_gap(y, expected.y) <= multi_test::tolerance<T>());
  CHECK(relative_gap(grads.lambda_b, expected.grad_b) <= multi_test::tolerance<T>());
  CHECK(relative_gap(grads.lambda_d, expected.grad_d) <= multi_test::tolerance<T>());
  CHECK(relative_gap(dx, expected.dx) <= multi_test::tolerance<T>());
}

namespace {

// L = 0.5 |Y - target|^2 for a mixed forward, so that G = Y - target.
struct fd_problem {
  vera::adapter_set<double>* set;
  matrix<double> x;
  matrix<double> w0;
  vec<double> bias;
  std::vector<int> ids;
  matrix<double> target;

  double loss() const {
    const matrix<double> y = vera::mixed_forward(x, w0, bias, *set, ids);
    return 0.5 * (y - target).squaredNorm();
  }
  template <class Get>
  double derivative(Get&& element) const {
    const double h = 1e-6;
    double& value = element();
    const double saved = value;
    value = saved + h;
    const double up = loss();
    value = saved - h;
    const double down = loss();
    value = saved;
    return (up - down) / (2 * h);
  }
};

}  // namespace

TEST_CASE("mixed gradients agree with finite differences of the mixed forward", "[multi][backward][fd]") {
  const shape s{41, 13, 11, 7};
  for (bool fan_in_fan_out : {false, true}) {
    for (layout l : {layout::random, layout::grouped}) {
      INFO(describe(l, fan_in_fan_out, 0.0));
      vera::adapter_set<double> set(multi_test::make_projection<double>(s), s.in, s.out, {s.rank, fan_in_fan_out});
      const auto adapters = populate(set, 400, 0.0);
      fd_problem p{&set, multi_test::random_matrix<double>(s.rows, s.in, 401), weight(set, 402),
                   multi_test::random_matrix<double>(s.out, 1, 403), assign(l, s.rows, adapters, 404),
                   multi_test::random_matrix<double>(s.rows, s.out, 405)};

      vera::mixed_context<double> ctx;
      const matrix<double> y = vera::mixed_forward(p.x, p.w0, p.bias, set, p.ids).train(ctx);
      const matrix<double> g = y - p.target;
      vera::mixed_gradients<double> grads;
      matrix<double> dx;
      vera::mixed_backward(g, p.w0, set, ctx).eval_to(grads, dx);

      for (vera::adapter_id id : adapters) {
        const vera::index c = set.column(id);
        const vera::adapter_options& options = set.options(id);
        for (vera::index j = 0; j < s.out; j += 3) {
          const double numeric = p.derivative([&]() -> double& { return set.lambda_b(id)(j); });
          // Frozen vectors and disabled or absent adapters get no gradient, whatever the loss says.
          const bool flows = options.train_b && set.enabled(id) && id != adapters[1];
          CHECK(grads.lambda_b(j, c) == Approx(flows ? numeric : 0.0).margin(1e-6).epsilon(1e-6));
        }
        for (vera::index k = 0; k < s.rank; k += 2) {
          const double numeric = p.derivative([&]() -> double& { return set.lambda_d(id)(k); });
          const bool flows = options.train_d && set.enabled(id) && id != adapters[1];
          CHECK(grads.lambda_d(k, c) == Approx(flows ? numeric : 0.0).margin(1e-6).epsilon(1e-6));
        }
      }
      for (vera::index i = 0; i < s.rows; i += 5) {
        for (vera::index j = 0; j < s.in; j += 4) {
          const double numeric = p.derivative([&]() -> double& { return p.x(i, j); });
          CHECK(dx(i, j) == Approx(numeric).margin(1e-6).epsilon(1e-6));
        }
      }
    }
  }
}

TEST_CASE("bad mixed backward inputs throw before anything is written", "[multi][backward][errors]") {
  using T = double;
  const shape s;
  vera::adapter_set<T> set(multi_test::make_projection<T>(s), s.in, s.out, {s.rank});
  const auto adapters = populate(set, 500, 0.0);
  const std::vector<int> ids = assign(layout::random, s.rows, adapters, 501);
  const matrix<T> x = multi_test::random_matrix<T>(s.rows, s.in, 502);
  matrix<T> w0 = weight(set, 503);
  const matrix<T> g = multi_test::random_matrix<T>(s.rows, s.out, 504);
  vera::mixed_context<T> ctx;

  REQUIRE_THROWS_WITH(vera::mixed_parameter_gradients(g, set, ctx), Catch::Contains("no mixed training forward"));
  const matrix<T> inference = vera::mixed_forward(x, w0, vera::no_bias, set, ids);
  REQUIRE_THROWS_AS(vera::mixed_input_gradient(g, w0, set, ctx), vera::state_error);

  const matrix<T> y = vera::mixed_forward(x, w0, vera::no_bias, set, ids).train(ctx);
  vera::mixed_gradients<T> grads(set);
  const matrix<T> start_b = grads.lambda_b;

  SECTION("shapes") {
    const matrix<T> g_cols(s.rows, s.out + 1);
    REQUIRE_THROWS_WITH(vera::mixed_parameter_gradients(g_cols, set, ctx),
                        Catch::Contains("G: expected 19 columns") && Catch::Contains("got 20"));
    const matrix<T> g_rows(s.rows - 1, s.out);
    REQUIRE_THROWS_WITH(vera::mixed_input_gradient(g_rows, w0, set, ctx),
                        Catch::Contains("G: expected 67 rows") && Catch::Contains("got 66"));
    const matrix<T> w_bad(s.in, s.out);
    REQUIRE_THROWS_WITH(vera::mixed_backward(g, w_bad, set, ctx), Catch::Contains("W0: expected 19 x 23"));
    vera::mixed_gradients<T> small;
    small.lambda_b.resize(s.out, 2);
    small.lambda_d.resize(s.rank, set.columns());
    REQUIRE_THROWS_WITH(small += vera::mixed_parameter_gradients(g, set, ctx),
                        Catch::Contains("gradients.lambda_b") && Catch::Contains("expected 19 x 6"));
    matrix<T> dx_bad = matrix<T>::Zero(s.rows, s.in + 1);
    REQUIRE_THROWS_WITH(vera::mixed_input_gradient(g, w0, set, ctx).add_to(dx_bad), Catch::Contains("destination"));
    REQUIRE_THROWS_WITH(vera::mixed_backward(g, w0, set, ctx).eval_to(grads, dx_bad, vera::assign_mode::accumulate),
                        Catch::Contains("dX"));
    CHECK(grads.lambda_b == start_b);
    CHECK(dx_bad.isZero());
  }
  SECTION("overwriting keeps the gradient buffers: only empty ones are sized") {
    // An optimizer may hold the buffers' addresses, so a wrong size is refused, not reallocated.
    vera::mixed_gradients<T> stale;
    stale.lambda_b = matrix<T>::Constant(s.out, set.columns() - 1, T(3));
    stale.lambda_d = matrix<T>::Constant(s.rank, set.columns() - 1, T(3));
    const T* b_data = stale.lambda_b.data();
    REQUIRE_THROWS_WITH(stale = vera::mixed_parameter_gradients(g, set, ctx),
                        Catch::Contains("gradients.lambda_b: expected 19 x 6, got 19 x 5"));
    matrix<T> dx;
    REQUIRE_THROWS_AS(vera::mixed_backward(g, w0, set, ctx).eval_to(stale, dx), vera::shape_error);
    CHECK(stale.lambda_b.data() == b_data);
    CHECK(stale.lambda_b.cols() == set.columns() - 1);
    CHECK((stale.lambda_b.array() == T(3)).all());
    CHECK((stale.lambda_d.array() == T(3)).all());
    CHECK(dx.size() == 0);
    stale.lambda_b.resize(s.out, set.columns());
    REQUIRE_THROWS_WITH(stale = vera::mixed_parameter_gradients(g, set, ctx),
                        Catch::Contains("gradients.lambda_d: expected 11 x 6, got 11 x 5"));

    vera::mixed_gradients<T> empty;
    empty = vera::mixed_parameter_gradients(g, set, ctx);
    CHECK(empty.lambda_b.rows() == s.out);
    CHECK(empty.lambda_b.cols() == set.columns());
    CHECK(empty.lambda_d.rows() == s.rank);
    CHECK(empty.lambda_d.cols() == set.columns());
    const T* sized = empty.lambda_b.data();
    empty = vera::mixed_parameter_gradients(g, set, ctx);
    CHECK(empty.lambda_b.data() == sized);
  }
  SECTION("a block or map destination of the wrong shape") {
    // The block is one column short inside a wider matrix: an unchecked write would land there.
    matrix<T> wide = matrix<T>::Zero(s.rows, s.in + 3);
    REQUIRE_THROWS_WITH(wide.leftCols(s.in - 1) = vera::mixed_input_gradient(g, w0, set, ctx),
                        Catch::Contains("destination: expected 67 x 23, got 67 x 22"));
    Eigen::Map<matrix<T>> map(wide.data(), s.rows - 1, s.in);
    REQUIRE_THROWS_AS(map = vera::mixed_input_gradient(g, w0, set, ctx), vera::shape_error);
    CHECK(wide.isZero());
  }
  SECTION("a context from another set, or from before the set changed") {
    vera::adapter_set<T> other(multi_test::make_projection<T>(s), s.in, s.out, {s.rank});
    other.add();
    REQUIRE_THROWS_WITH(vera::mixed_parameter_gradients(g, other, ctx), Catch::Contains("different adapter set"));
    const auto expr = vera::mixed_parameter_gradients(g, set, ctx);
    set.disable(adapters[0]);
    REQUIRE_THROWS_WITH(vera::mixed_parameter_gradients(g, set, ctx), Catch::Contains("since the training forward"));
    REQUIRE_THROWS_AS(grads = expr, vera::state_error);
    CHECK(grads.lambda_b == start_b);
    set.enable(adapters[0]);  // the version moved on: the context stays stale
    REQUIRE_THROWS_AS(vera::mixed_input_gradient(g, w0, set, ctx), vera::state_error);
    set.add();
    REQUIRE_THROWS_AS(vera::mixed_backward(g, w0, set, ctx), vera::state_error);
  }
  SECTION("merged adapters and aliasing") {
    const matrix<T> w_saved = w0;
    set.merge(w0, adapters[0]);
    REQUIRE_THROWS_WITH(vera::mixed_parameter_gradients(g, set, ctx), Catch::Contains("merged"));
    set.unmerge(w0);
    w0 = w_saved;
    // A square layer lets dX be G itself.
    const shape square{s.rows, 17, 17, s.rank};
    vera::adapter_set<T> sq(multi_test::make_projection<T>(square), square.in, square.out, {square.rank});
    sq.add(multi_test::random_options(1));
    const matrix<T> xs = multi_test::random_matrix<T>(square.rows, square.in, 505);
    const matrix<T> ws = multi_test::random_matrix<T>(square.out, square.in, 506);
    const std::vector<int> zeros(static_cast<std::size_t>(square.rows), 0);
    vera::mixed_context<T> sq_ctx;
    const matrix<T> ys = vera::mixed_forward(xs, ws, vera::no_bias, sq, zeros).train(sq_ctx);
    matrix<T> gs = multi_test::random_matrix<T>(square.rows, square.out, 507);
    const matrix<T> before = gs;
    REQUIRE_THROWS_AS(vera::mixed_input_gradient(gs, ws, sq, sq_ctx).add_to(gs), vera::aliasing_error);
    vera::mixed_gradients<T> sq_grads(sq);
    REQUIRE_THROWS_AS(vera::mixed_backward(gs, ws, sq, sq_ctx).eval_to(sq_grads, gs, vera::assign_mode::accumulate),
                      vera::aliasing_error);
    CHECK(gs == before);
  }
}
