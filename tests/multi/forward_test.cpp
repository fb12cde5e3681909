// SPDX-License-Identifier: Apache-2.0
// Tests of the mixed forward against the core's single-adapter forward looped over each adapter.
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

// Rows for `adapters` laid out as `l`. adapters[1] never gets a row (an empty group).
std::vector<int> assign(layout l, vera::index rows, const std::vector<vera::adapter_id>& adapters,
                        std::uint32_t seed) {
  std::vector<vera::adapter_id> used = adapters;
  used.erase(used.begin() + 1);
  std::vector<int> ids = multi_test::random_ids(rows, used, seed);
  switch (l) {
    case layout::random:
      break;
    case layout::grouped:
      std::sort(ids.begin(), ids.end());
      break;
    case layout::one_adapter:
      std::fill(ids.begin(), ids.end(), adapters[2]);
      break;
    case layout::one_adapter_and_base:
      for (int& id : ids) id = id == vera::no_adapter ? id : adapters[2];
      break;
    case layout::base_only:
      std::fill(ids.begin(), ids.end(), vera::no_adapter);
      break;
  }
  return ids;
}

// Five adapters with different vectors, one with scale 0, one negative, one disabled.
template <class T>
std::vector<vera::adapter_id> populate(vera::adapter_set<T>& set, std::uint32_t seed, double dropout = 0.0) {
  std::vector<vera::adapter_id> ids;
  for (int k = 0; k < 5; ++k) {
    vera::adapter_options options = multi_test::random_options(seed + static_cast<std::uint64_t>(k));
    options.fan_in_fan_out = set.fan_in_fan_out();
    options.dropout = k % 2 == 0 ? dropout : 0.0;
    ids.push_back(set.add(options));
    multi_test::perturb_b(set, ids.back(), seed + 100 + static_cast<std::uint32_t>(k));
  }
  set.set_scale(ids[0], T(2));
  set.set_scale(ids[3], T(-0.5));
  set.set_scale(ids[4], T(0));
  return ids;
}

std::string describe(layout l, bool fan_in_fan_out, bool reused) {
  std::ostringstream os;
  os << name(l) << ", fan_in_fan_out " << fan_in_fan_out << ", workspace " << reused;
  return os.str();
}

template <class T>
matrix<T> weight(const vera::adapter_set<T>& set, std::uint32_t seed) {
  return set.fan_in_fan_out() ? multi_test::random_matrix<T>(set.in_features(), set.out_features(), seed)
                              : multi_test::random_matrix<T>(set.out_features(), set.in_features(), seed);
}

}  // namespace

TEMPLATE_TEST_CASE("mixed forward matches the core forward looped over each adapter's rows",
                   "[multi][forward]", float, double) {
  using T = TestType;
  const shape s;
  std::uint32_t seed = 10;
  for (bool fan_in_fan_out : {false, true}) {
    for (layout l : all_layouts) {
      for (bool reused : {false, true}) {
        INFO(describe(l, fan_in_fan_out, reused));
        vera::adapter_set<T> set(multi_test::make_projection<T>(s), s.in, s.out, {s.rank, fan_in_fan_out});
        const auto adapters = populate(set, seed++);
        set.disable(adapters[3]);
        const std::vector<int> ids = assign(l, s.rows, adapters, seed++);
        const matrix<T> x = multi_test::random_matrix<T>(s.rows, s.in, seed++);
        const matrix<T> w0 = weight(set, seed++);
        const vec<T> bias = multi_test::random_matrix<T>(s.out, 1, seed++);

        vera::mixed_workspace<T> ws;
        matrix<T> y;
        if (reused) {
          y = vera::mixed_forward(x, w0, bias, set, ids).using_workspace(ws);
          y = vera::mixed_forward(x, w0, bias, set, ids).using_workspace(ws);  // warm buffers
        } else {
          y = vera::mixed_forward(x, w0, bias, set, ids);
        }
        const matrix<T> expected = multi_test::loop_forward(set, x, w0, bias, ids);
        CHECK(relative_gap(y, expected) <= multi_test::tolerance<T>());

        // Without bias, against the adapter-term oracle.
        const matrix<T> y_no_bias = vera::mixed_forward(x, w0, vera::no_bias, set, ids);
        const matrix<T> empty;
        const auto reference = multi_test::loop_reference<T>(set, x, w0, nullptr, ids, empty);
        CHECK(relative_gap(y_no_bias, reference.y) <= multi_test::tolerance<T>());
      }
    }
  }
}

TEMPLATE_TEST_CASE("mixed forward handles hundreds of adapters, most with one or no rows",
                   "[multi][forward]", float, double) {
  using T = TestType;
  const shape s{127, 23, 19, 11};
  vera::adapter_set<T> set(multi_test::make_projection<T>(s), s.in, s.out, {s.rank});
  std::vector<vera::adapter_id> adapters;
  for (int k = 0; k < 300; ++k) {
    adapters.push_back(set.add(multi_test::random_options(static_cast<std::uint64_t>(k))));
    set.set_scale(adapters.back(), T(1) + T(k % 7) / T(4));
  }
  for (int k = 0; k < 300; k += 3) set.remove(adapters[static_cast<std::size_t>(k)]);
  const std::vector<vera::adapter_id> live = set.ids();
  const std::vector<int> ids = multi_test::random_ids(s.rows, live, 3);
  const matrix<T> x = multi_test::random_matrix<T>(s.rows, s.in, 4);
  const matrix<T> w0 = multi_test::random_matrix<T>(s.out, s.in, 5);
  const vec<T> bias = multi_test::random_matrix<T>(s.out, 1, 6);
  const matrix<T> y = vera::mixed_forward(x, w0, bias, set, ids);
  CHECK(relative_gap(y, multi_test::loop_forward(set, x, w0, bias, ids)) <= multi_test::tolerance<T>());
}

TEMPLATE_TEST_CASE("mixed forward accepts the usual operand and destination forms",
                   "[multi][forward]", float, double) {
  using T = TestType;
  const shape s;
  vera::adapter_set<T> set(multi_test::make_projection<T>(s), s.in, s.out, {s.rank});
  const auto adapters = populate(set, 40);
  const std::vector<int> ids = assign(layout::random, s.rows, adapters, 41);
  const matrix<T> x = multi_test::random_matrix<T>(s.rows, s.in, 42);
  const matrix<T> w0 = weight(set, 43);
  const vec<T> bias = multi_test::random_matrix<T>(s.out, 1, 44);
  const matrix<T> expected = multi_test::loop_forward(set, x, w0, bias, ids);
  const double tol = multi_test::tolerance<T>();

  SECTION("Eigen int vector of ids") {
    const Eigen::VectorXi eigen_ids = Eigen::Map<const Eigen::VectorXi>(ids.data(), s.rows);
    const matrix<T> y = vera::mixed_forward(x, w0, bias, set, eigen_ids);
    CHECK(relative_gap(y, expected) <= tol);
  }
  SECTION("add_to accumulates") {
    const matrix<T> start = multi_test::random_matrix<T>(s.rows, s.out, 45);
    matrix<T> y = start;
    vera::mixed_forward(x, w0, bias, set, ids).add_to(y);
    CHECK(relative_gap(y, matrix<T>(start + expected)) <= tol);
  }
  SECTION("row-major destination, in both orders of the passes") {
    Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> y = vera::mixed_forward(x, w0, bias, set, ids);
    CHECK(relative_gap(y, expected) <= tol);
    std::vector<int> grouped = ids;
    std::sort(grouped.begin(), grouped.end());
    y = vera::mixed_forward(x, w0, bias, set, grouped);
    CHECK(relative_gap(y, multi_test::loop_forward(set, x, w0, bias, grouped)) <= tol);
  }
  SECTION("block destination and expression operands") {
    matrix<T> big = matrix<T>::Zero(s.rows + 2, s.out + 3);
    const matrix<T> x_wide = multi_test::random_matrix<T>(s.rows, s.in + 5, 46);
    auto block = big.block(1, 2, s.rows, s.out);
    vera::mixed_forward(x_wide.leftCols(s.in), w0, bias, set, ids).add_to(block);
    const matrix<T> x_left = x_wide.leftCols(s.in);
    CHECK(relative_gap(block, multi_test::loop_forward(set, x_left, w0, bias, ids)) <= tol);
    CHECK(big.row(0).isZero());
    const matrix<T> y2 = vera::mixed_forward(T(2) * x, w0, bias, set, ids);
    const matrix<T> x2 = T(2) * x;
    CHECK(relative_gap(y2, multi_test::loop_forward(set, x2, w0, bias, ids)) <= tol);
  }
  SECTION("single-adapter call uses the active adapter; none active is the base model") {
    set.select(adapters[2]);
    const matrix<T> y = vera::mixed_forward(x, w0, bias, set);
    const std::vector<int> all_active(static_cast<std::size_t>(s.rows), adapters[2]);
    CHECK(relative_gap(y, multi_test::loop_forward(set, x, w0, bias, all_active)) <= tol);
    const vera::adapter<T> single = set.to_adapter(adapters[2]);
    const matrix<T> core = vera::forward(x, w0, bias, single);
    CHECK(relative_gap(y, core) <= tol);
    set.select(vera::no_adapter);
    const matrix<T> base = vera::mixed_forward(x, w0, bias, set);
    CHECK(relative_gap(base, matrix<T>((x * w0.transpose()).rowwise() + bias.transpose())) <= tol);
  }
  SECTION("zero rows and one row") {
    const matrix<T> none(0, s.in);
    const std::vector<int> no_ids;
    const matrix<T> y0 = vera::mixed_forward(none, w0, bias, set, no_ids);
    CHECK(y0.rows() == 0);
    CHECK(y0.cols() == s.out);
    const matrix<T> one = x.topRows(1);
    const std::vector<int> one_id{adapters[0]};
    const matrix<T> y1 = vera::mixed_forward(one, w0, bias, set, one_id);
    CHECK(relative_gap(y1, multi_test::loop_forward(set, one, w0, bias, one_id)) <= tol);
  }
}

TEMPLATE_TEST_CASE("a training forward saves P and the row columns and computes the same Y",
                   "[multi][forward][train]", float, double) {
  using T = TestType;
  const shape s;
  vera::adapter_set<T> set(multi_test::make_projection<T>(s), s.in, s.out, {s.rank});
  const auto adapters = populate(set, 50);
  set.disable(adapters[3]);
  const std::vector<int> ids = assign(layout::random, s.rows, adapters, 51);
  const matrix<T> x = multi_test::random_matrix<T>(s.rows, s.in, 52);
  const matrix<T> w0 = weight(set, 53);
  const vec<T> bias = multi_test::random_matrix<T>(s.out, 1, 54);

  vera::mixed_context<T> ctx;
  CHECK_FALSE(ctx.ready());
  const matrix<T> y = vera::mixed_forward(x, w0, bias, set, ids).train(ctx);
  REQUIRE(ctx.ready());
  CHECK(ctx.owner() == &set);
  CHECK(ctx.owner_version() == set.version());
  CHECK(relative_gap(y, multi_test::loop_forward(set, x, w0, bias, ids)) <= multi_test::tolerance<T>());
  CHECK(relative_gap(ctx.projected(), matrix<T>(x * set.a().transpose())) <= multi_test::tolerance<T>());
  REQUIRE(ctx.row_columns().size() == static_cast<std::size_t>(s.rows));
  for (vera::index i = 0; i < s.rows; ++i) {
    const int id = ids[static_cast<std::size_t>(i)];
    const vera::index expected = id == vera::no_adapter || id == adapters[3] ? -1 : set.column(id);
    CHECK(ctx.row_columns()[static_cast<std::size_t>(i)] == expected);
  }
}

TEMPLATE_TEST_CASE("dropout applies each adapter's own probability to its rows, in training only",
                   "[multi][forward][dropout]", float, double) {
  using T = TestType;
  const shape s{131, 23, 19, 11};  // more rows than one dropout tile
  for (layout l : {layout::random, layout::grouped, layout::one_adapter}) {
    INFO(name(l));
    vera::adapter_set<T> set(multi_test::make_projection<T>(s), s.in, s.out, {s.rank});
    const auto adapters = populate(set, 60, 0.3);
    const std::vector<int> ids = assign(l, s.rows, adapters, 61);
    const matrix<T> x = multi_test::random_matrix<T>(s.rows, s.in, 62);
    const matrix<T> w0 = weight(set, 63);
    const vec<T> bias = multi_test::random_matrix<T>(s.out, 1, 64);

    vera::mixed_context<T> ctx(/*dropout_seed=*/77);
    const matrix<T> y = vera::mixed_forward(x, w0, bias, set, ids).train(ctx);
    const matrix<T> empty;
    const auto reference = multi_test::loop_reference<T>(set, x, w0, &bias, ids, empty, &ctx.mask_key());
    CHECK(relative_gap(y, reference.y) <= multi_test::tolerance<T>());
    const matrix<T> without = multi_test::loop_forward(set, x, w0, bias, ids);
    CHECK(relative_gap(y, without) > 1e-3);  // the masks did something

    // A second step draws new masks.
    const matrix<T> y_next = vera::mixed_forward(x, w0, bias, set, ids).train(ctx);
    CHECK(relative_gap(y_next, y) > 1e-3);

    const matrix<T> inference = vera::mixed_forward(x, w0, bias, set, ids);
    CHECK(relative_gap(inference, without) <= multi_test::tolerance<T>());
  }
}

TEST_CASE("bad mixed forward inputs throw before anything is written", "[multi][forward][errors]") {
  using T = float;
  const shape s;
  vera::adapter_set<T> set(multi_test::make_projection<T>(s), s.in, s.out, {s.rank});
  const auto adapters = populate(set, 70);
  set.remove(adapters[4]);
  std::vector<int> ids = assign(layout::random, s.rows, adapters, 71);
  std::replace(ids.begin(), ids.end(), adapters[4], adapters[0]);
  const matrix<T> x = multi_test::random_matrix<T>(s.rows, s.in, 72);
  const matrix<T> w0 = weight(set, 73);
  const vec<T> bias = multi_test::random_matrix<T>(s.out, 1, 74);

  SECTION("shapes") {
    const matrix<T> x_bad(s.rows, s.in + 1);
    REQUIRE_THROWS_WITH(vera::mixed_forward(x_bad, w0, bias, set, ids),
                        Catch::Contains("X: expected 23 columns") && Catch::Contains("got 24"));
    const matrix<T> w_bad = w0.transpose();
    REQUIRE_THROWS_WITH(vera::mixed_forward(x, w_bad, bias, set, ids),
                        Catch::Contains("W0: expected 19 x 23, got 23 x 19"));
    const vec<T> bias_bad(s.out - 1);
    REQUIRE_THROWS_WITH(vera::mixed_forward(x, w0, bias_bad, set, ids),
                        Catch::Contains("bias: expected 19 elements, got 18"));
    const std::vector<int> short_ids(ids.begin(), ids.end() - 1);
    REQUIRE_THROWS_WITH(vera::mixed_forward(x, w0, bias, set, short_ids),
                        Catch::Contains("row assignment") && Catch::Contains("expected 67") &&
                            Catch::Contains("got 66"));
    const Eigen::MatrixXi id_matrix = Eigen::MatrixXi::Zero(s.rows, 2);
    REQUIRE_THROWS_AS(vera::mixed_forward(x, w0, bias, set, id_matrix), vera::shape_error);
    matrix<T> y_bad(s.rows, s.out + 1);
    REQUIRE_THROWS_WITH(vera::mixed_forward(x, w0, bias, set, ids).add_to(y_bad),
                        Catch::Contains("destination"));
  }
  SECTION("a block or map destination of the wrong shape") {
    // Eigen resizes a plain matrix before evalTo but cannot resize a block or a map. The block
    // is one column short inside a wider matrix, so an unchecked write would land in `wide`.
    matrix<T> wide = matrix<T>::Zero(s.rows, s.out + 3);
    REQUIRE_THROWS_WITH(wide.leftCols(s.out - 1) = vera::mixed_forward(x, w0, bias, set, ids),
                        Catch::Contains("destination: expected 67 x 19, got 67 x 18"));
    Eigen::Map<matrix<T>> map(wide.data(), s.rows - 1, s.out);
    REQUIRE_THROWS_AS(map = vera::mixed_forward(x, w0, bias, set, ids), vera::shape_error);
    CHECK(wide.isZero());
  }
  SECTION("ids that are not in the set name the row and the id") {
    std::vector<int> bad = ids;
    bad[5] = 99;
    REQUIRE_THROWS_WITH(vera::mixed_forward(x, w0, bias, set, bad),
                        Catch::Contains("row 5") && Catch::Contains("got 99") && Catch::Contains("never added"));
    bad[5] = adapters[4];
    REQUIRE_THROWS_WITH(vera::mixed_forward(x, w0, bias, set, bad),
                        Catch::Contains("row 5") && Catch::Contains("removed"));
    bad[5] = -2;
    REQUIRE_THROWS_WITH(vera::mixed_forward(x, w0, bias, set, bad),
                        Catch::Contains("row 5") && Catch::Contains("negative"));
    REQUIRE_THROWS_AS(vera::mixed_forward(x, w0, bias, set, bad), vera::value_error);
  }
  SECTION("a set changed after the expression was built is checked again before writing") {
    const auto expr = vera::mixed_forward(x, w0, bias, set, ids);
    set.remove(adapters[0]);
    const matrix<T> start = multi_test::random_matrix<T>(s.rows, s.out, 75);
    matrix<T> y = start;
    vera::mixed_context<T> ctx;
    const std::vector<int> base_rows = assign(layout::base_only, s.rows, adapters, 1);
    const matrix<T> filled = vera::mixed_forward(x, w0, bias, set, base_rows).train(ctx);
    REQUIRE(ctx.ready());
    const auto version = ctx.owner_version();
    REQUIRE_THROWS_WITH(expr.add_to(y), Catch::Contains("removed"));
    REQUIRE_THROWS_AS(expr.train(ctx).add_to(y), vera::value_error);
    CHECK(y == start);
    CHECK(ctx.ready());
    CHECK(ctx.owner_version() == version);
  }
  SECTION("merged adapters and aliasing") {
    matrix<T> w = w0;
    set.merge(w, adapters[0]);
    REQUIRE_THROWS_WITH(vera::mixed_forward(x, w, bias, set, ids), Catch::Contains("merged"));
    set.unmerge(w);
    // A square layer lets the destination be X itself.
    const shape square{s.rows, 17, 17, s.rank};
    vera::adapter_set<T> sq(multi_test::make_projection<T>(square), square.in, square.out, {square.rank});
    sq.add();
    matrix<T> xs = multi_test::random_matrix<T>(square.rows, square.in, 76);
    const matrix<T> ws = multi_test::random_matrix<T>(square.out, square.in, 77);
    const matrix<T> before = xs;
    const std::vector<int> zeros(static_cast<std::size_t>(square.rows), 0);
    REQUIRE_THROWS_AS(vera::mixed_forward(xs, ws, vera::no_bias, sq, zeros).add_to(xs), vera::aliasing_error);
    CHECK(xs == before);
  }
}
