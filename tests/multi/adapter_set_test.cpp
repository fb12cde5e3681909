// SPDX-License-Identifier: Apache-2.0
// Tests of adapter_set: ids and columns, per-adapter settings, vectors, and merging one adapter.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include <vera/multi.hpp>

#include "loop_reference.hpp"

using multi_test::matrix;
using multi_test::relative_gap;
using multi_test::shape;

TEST_CASE("adapters get increasing ids, the lowest free column, and never a reused id",
          "[multi][adapter_set]") {
  const shape s;
  vera::adapter_set<float> set(multi_test::make_projection<float>(s), s.in, s.out, {s.rank});
  CHECK(set.size() == 0);
  CHECK(set.columns() == 0);
  CHECK(set.active() == vera::no_adapter);

  const vera::adapter_id a = set.add();
  const vera::adapter_id b = set.add();
  const vera::adapter_id c = set.add();
  CHECK(a == 0);
  CHECK(b == 1);
  CHECK(c == 2);
  CHECK(set.active() == a);  // the first adapter becomes the active one
  CHECK(set.column(b) == 1);
  CHECK(set.lambda_b_matrix().rows() == s.out);
  CHECK(set.lambda_b_matrix().cols() == 3);
  CHECK(set.lambda_d_matrix().rows() == s.rank);

  set.remove(b);
  CHECK_FALSE(set.contains(b));
  CHECK(set.size() == 2);
  CHECK(set.columns() == 3);
  CHECK(set.id_at(1) == vera::no_adapter);
  CHECK(set.lambda_b_matrix().col(1).isZero());
  CHECK(set.ids() == std::vector<vera::adapter_id>{a, c});

  const vera::adapter_id d = set.add();
  CHECK(d == 3);              // ids are never reused...
  CHECK(set.column(d) == 1);  // ...but columns are
  CHECK(set.columns() == 3);

  REQUIRE_THROWS_AS(set.column(b), vera::value_error);
  REQUIRE_THROWS_WITH(set.lambda_b(b), Catch::Contains("adapter id 1") && Catch::Contains("removed"));
  REQUIRE_THROWS_WITH(set.remove(17), Catch::Contains("never added") && Catch::Contains("0..3"));
  REQUIRE_THROWS_AS(set.remove(-4), vera::value_error);
  // A column out of range is the library's error, with the index and the valid range.
  REQUIRE_THROWS_AS(set.id_at(3), vera::value_error);
  REQUIRE_THROWS_WITH(set.id_at(3), Catch::Contains("adapter_set::id_at") && Catch::Contains("[0, 3)") &&
                                        Catch::Contains("got 3"));
  REQUIRE_THROWS_WITH(set.id_at(-1), Catch::Contains("got -1"));

  set.remove(a);
  CHECK(set.active() == vera::no_adapter);  // removing the active adapter leaves none active
}

TEST_CASE("many adapters grow the storage without moving earlier vectors' values", "[multi][adapter_set]") {
  const shape s;
  vera::adapter_set<double> set(multi_test::make_projection<double>(s), s.in, s.out, {s.rank});
  std::vector<vera::adapter_id> ids;
  for (int k = 0; k < 300; ++k) ids.push_back(set.add(multi_test::random_options(static_cast<std::uint64_t>(k))));
  for (int k = 0; k < 300; k += 37) {
    vera::adapter_options options = multi_test::random_options(static_cast<std::uint64_t>(k));
    options.rank = s.rank;
    const vera::adapter<double> single(set.shared_projection(), s.in, s.out, options);
    CHECK(set.lambda_d(ids[static_cast<std::size_t>(k)]) == single.lambda_d());
  }
  CHECK(set.columns() == 300);
}

TEMPLATE_TEST_CASE("a set adapter starts exactly as a standalone core adapter with the same options",
                   "[multi][adapter_set]", float, double) {
  using T = TestType;
  const shape s;
  vera::adapter_set<T> set(multi_test::make_projection<T>(s), s.in, s.out, {s.rank});
  vera::adapter_options constant;
  constant.d_initial = 0.25;
  constant.b_initial = 0.5;
  for (const vera::adapter_options& options : {constant, multi_test::random_options(9)}) {
    const vera::adapter_id id = set.add(options);
    vera::adapter_options with_rank = options;
    with_rank.rank = s.rank;
    const vera::adapter<T> single(set.shared_projection(), s.in, s.out, with_rank);
    CHECK(set.lambda_b(id) == single.lambda_b());
    CHECK(set.lambda_d(id) == single.lambda_d());
    CHECK(set.options(id).rank == s.rank);
  }
  CHECK(set.a() == set.shared_projection().a(s.in, s.rank));
  CHECK(set.b() == set.shared_projection().b(s.out, s.rank));
}

TEST_CASE("enable, disable, scale and select change only what they say", "[multi][adapter_set]") {
  const shape s;
  vera::adapter_set<double> set(multi_test::make_projection<double>(s), s.in, s.out, {s.rank});
  const vera::adapter_id a = set.add();
  const vera::adapter_id b = set.add();
  const auto v0 = set.version();

  CHECK(set.enabled(a));
  set.disable(a);
  CHECK_FALSE(set.enabled(a));
  CHECK(set.version() != v0);
  const auto v1 = set.version();
  set.disable(a);  // no change, same version
  CHECK(set.version() == v1);
  set.enable(a);
  CHECK(set.enabled(a));

  CHECK(set.scale(b) == 1.0);
  set.set_scale(b, 0.25);
  CHECK(set.scale(b) == 0.25);
  CHECK(set.scale(a) == 1.0);
  REQUIRE_THROWS_AS(set.set_scale(b, std::numeric_limits<double>::infinity()), vera::value_error);
  CHECK(set.scale(b) == 0.25);

  set.select(b);
  CHECK(set.active() == b);
  set.select(vera::no_adapter);
  CHECK(set.active() == vera::no_adapter);
  REQUIRE_THROWS_AS(set.select(5), vera::value_error);
  CHECK(set.active() == vera::no_adapter);
}

TEST_CASE("vectors are writable in place and set_lambdas checks before writing", "[multi][adapter_set]") {
  const shape s;
  vera::adapter_set<double> set(multi_test::make_projection<double>(s), s.in, s.out, {s.rank});
  const vera::adapter_id a = set.add();
  const vera::adapter_id b = set.add();
  set.lambda_b(a).setConstant(2.0);
  set.lambda_d(b)(3) = -1.5;
  CHECK(set.lambda_b_matrix().col(set.column(a)).isConstant(2.0));
  CHECK(set.lambda_d_matrix()(3, set.column(b)) == -1.5);

  const Eigen::VectorXd good_b = Eigen::VectorXd::LinSpaced(s.out, 0.0, 1.0);
  const Eigen::VectorXd good_d = Eigen::VectorXd::LinSpaced(s.rank, 1.0, 2.0);
  set.set_lambdas(b, good_b, good_d);
  CHECK(set.lambda_b(b) == good_b);
  CHECK(set.lambda_d(b) == good_d);

  REQUIRE_THROWS_WITH(set.set_lambdas(b, Eigen::VectorXd::Zero(s.out + 1), good_d),
                      Catch::Contains("lambda_b") && Catch::Contains("expected 19"));
  Eigen::VectorXd bad_d = good_d;
  bad_d(2) = std::nan("");
  REQUIRE_THROWS_AS(set.set_lambdas(b, good_b * 3.0, bad_d), vera::value_error);
  CHECK(set.lambda_b(b) == good_b);  // unchanged
}

TEST_CASE("bad layer shapes and options are rejected with the field named", "[multi][adapter_set]") {
  const shape s;
  const auto shared = multi_test::make_projection<float>(s);
  REQUIRE_THROWS_AS(vera::adapter_set<float>(shared, s.in + 100, s.out), vera::shape_error);
  REQUIRE_THROWS_AS(vera::adapter_set<float>(shared, s.in, s.out + 100), vera::shape_error);
  REQUIRE_THROWS_AS(vera::adapter_set<float>(shared, s.in, s.out, {shared.rank() + 1}), vera::rank_error);
  REQUIRE_THROWS_AS(vera::adapter_set<float>(shared, s.in, s.out, {-1}), vera::value_error);
  REQUIRE_THROWS_AS(vera::adapter_set<float>(shared, 0, s.out), vera::value_error);

  vera::adapter_set<float> set(shared, s.in, s.out, {s.rank});
  CHECK(set.rank() == s.rank);
  vera::adapter_options options;
  options.rank = s.rank + 1;
  REQUIRE_THROWS_WITH(set.add(options), Catch::Contains("adapter_options.rank") && Catch::Contains("11"));
  options.rank = 0;
  options.fan_in_fan_out = true;
  REQUIRE_THROWS_WITH(set.add(options), Catch::Contains("fan_in_fan_out"));
  options.fan_in_fan_out = false;
  options.dropout = 1.0;
  REQUIRE_THROWS_WITH(set.add(options), Catch::Contains("adapter_options.dropout"));
  CHECK(set.size() == 0);
  options.dropout = 0.0;
  options.rank = s.rank;  // the set's own rank is accepted
  CHECK(set.add(options) == 0);

  // A default set takes the projection's rank.
  const vera::adapter_set<float> full(shared, s.in, s.out);
  CHECK(full.rank() == shared.rank());
}

TEMPLATE_TEST_CASE("merging one adapter matches the core's merge of the same adapter; unmerge undoes it",
                   "[multi][adapter_set][merge]", float, double) {
  using T = TestType;
  const shape s;
  for (bool fan_in_fan_out : {false, true}) {
    vera::adapter_set<T> set(multi_test::make_projection<T>(s), s.in, s.out, {s.rank, fan_in_fan_out});
    vera::adapter_options options = multi_test::random_options(1);
    options.fan_in_fan_out = fan_in_fan_out;
    const vera::adapter_id a = set.add(options);
    options.init_seed = 2;
    const vera::adapter_id b = set.add(options);
    multi_test::perturb_b(set, b, 3);
    set.set_scale(b, T(0.75));

    const matrix<T> w0 = fan_in_fan_out ? multi_test::random_matrix<T>(s.in, s.out, 4)
                                        : multi_test::random_matrix<T>(s.out, s.in, 4);
    matrix<T> w = w0;
    set.merge(w, b);
    CHECK(set.merged() == b);
    const vera::adapter<T> single = multi_test::plain_adapter(set, b);
    const matrix<T> expected = vera::merged_weight(w0, single);
    CHECK(relative_gap(w, expected) <= multi_test::tolerance<T>());
    CHECK(relative_gap(w, w0) > 1e-3);  // the merge did something

    // The merged delta is remembered: changing the adapter does not change what unmerge removes.
    set.lambda_b(b) *= T(3);
    set.set_scale(b, T(2));
    set.unmerge(w);
    CHECK(set.merged() == vera::no_adapter);
    CHECK(relative_gap(w, w0) <= 10 * multi_test::tolerance<T>());

    // merge(W0) without an id merges the active adapter.
    set.select(a);
    matrix<T> wa = w0;
    set.merge(wa);
    CHECK(set.merged() == a);
    set.unmerge(wa);
  }
}

TEST_CASE("merge state is guarded: one at a time, no removal or disabling while merged", "[multi][adapter_set][merge]") {
  const shape s;
  vera::adapter_set<double> set(multi_test::make_projection<double>(s), s.in, s.out, {s.rank});
  const vera::adapter_id a = set.add(multi_test::random_options(1));
  const vera::adapter_id b = set.add(multi_test::random_options(2));
  matrix<double> w = multi_test::random_matrix<double>(s.out, s.in, 3);

  REQUIRE_THROWS_AS(set.unmerge(w), vera::state_error);
  set.disable(b);
  REQUIRE_THROWS_WITH(set.merge(w, b), Catch::Contains("disabled"));
  set.enable(b);

  matrix<double> wrong(s.in, s.out + 1);
  REQUIRE_THROWS_WITH(set.merge(wrong, a), Catch::Contains("W0") && Catch::Contains("expected 19 x 23"));
  CHECK(set.merged() == vera::no_adapter);

  set.merge(w, a);
  REQUIRE_THROWS_WITH(set.merge(w, b), Catch::Contains("already merged"));
  REQUIRE_THROWS_WITH(set.remove(a), Catch::Contains("merged"));
  REQUIRE_THROWS_WITH(set.disable(a), Catch::StartsWith("adapter_set::disable:") && Catch::Contains("merged"));
  // The message names the function the caller used.
  REQUIRE_THROWS_WITH(set.set_enabled(a, false),
                      Catch::StartsWith("adapter_set::set_enabled:") && Catch::Contains("merged"));
  REQUIRE_THROWS_WITH(set.enable(17), Catch::StartsWith("adapter_set::enable:"));
  CHECK(set.enabled(a));
  set.unmerge(w);
  set.remove(a);

  set.select(vera::no_adapter);
  REQUIRE_THROWS_WITH(set.merge(w), Catch::Contains("no adapter is active"));
}

TEST_CASE("safe merge leaves W0 untouched when the merged weight would not be finite", "[multi][adapter_set][merge]") {
  const shape s;
  vera::adapter_set<float> set(multi_test::make_projection<float>(s), s.in, s.out, {s.rank});
  const vera::adapter_id a = set.add(multi_test::random_options(1));
  set.lambda_b(a).setConstant(3e38f);
  set.set_scale(a, 1e10f);
  const matrix<float> w0 = multi_test::random_matrix<float>(s.out, s.in, 3);
  matrix<float> w = w0;
  REQUIRE_THROWS_AS(set.merge(w, a), vera::value_error);
  CHECK(w == w0);
  CHECK(set.merged() == vera::no_adapter);
}

TEST_CASE("to_adapter folds the scale into lambda_b and keeps the options", "[multi][adapter_set]") {
  const shape s;
  vera::adapter_set<double> set(multi_test::make_projection<double>(s), s.in, s.out, {s.rank});
  vera::adapter_options options = multi_test::random_options(4);
  options.train_d = false;
  const vera::adapter_id a = set.add(options);
  set.set_scale(a, -0.5);
  const vera::adapter<double> single = set.to_adapter(a);
  CHECK(single.lambda_b() == -0.5 * set.lambda_b(a));
  CHECK(single.lambda_d() == set.lambda_d(a));
  CHECK_FALSE(single.options().train_d);
  CHECK(single.rank() == s.rank);
}
