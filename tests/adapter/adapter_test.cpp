// SPDX-License-Identifier: Apache-2.0
// Tests of adapter state: initialisation variants, rank slicing, option checks, set_lambdas.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

#include <vera/vera.hpp>

#include "../support/reference.hpp"

using Catch::Matchers::Contains;
using vera_test::same_bits;

namespace {

template <class T>
vera::projection<T> shared_projection() {
  return vera::projection<T>(vera::projection_spec{2, 8, 16, 12});
}

}  // namespace

TEMPLATE_TEST_CASE("adapter default init is PEFT's: b = 0, d = 0.1", "[adapter]", float, double) {
  using T = TestType;
  const vera::adapter<T> ad(shared_projection<T>(), 10, 7);
  CHECK(ad.in_features() == 10);
  CHECK(ad.out_features() == 7);
  CHECK(ad.rank() == 8);  // rank 0 in the options means the projection's rank
  REQUIRE(ad.lambda_b().size() == 7);
  REQUIRE(ad.lambda_d().size() == 8);
  CHECK((ad.lambda_b().array() == T(0)).all());
  CHECK((ad.lambda_d().array() == static_cast<T>(0.1)).all());
}

TEMPLATE_TEST_CASE("adapter constant init follows d_initial and b_initial", "[adapter]", float,
                   double) {
  using T = TestType;
  vera::adapter_options options;
  options.d_initial = 1e-7;  // the paper's small-d ablation
  options.b_initial = 0.5;
  const vera::adapter<T> ad(shared_projection<T>(), 16, 12, options);
  CHECK((ad.lambda_d().array() == static_cast<T>(1e-7)).all());
  CHECK((ad.lambda_b().array() == T(0.5)).all());
}

TEMPLATE_TEST_CASE("adapter random init: b = 1, d reproducible from init_seed", "[adapter]", float,
                   double) {
  using T = TestType;
  vera::adapter_options options;
  options.init = vera::init_kind::random;
  options.init_seed = 123;
  const auto p = shared_projection<T>();
  const vera::adapter<T> first(p, 16, 12, options);
  const vera::adapter<T> again(p, 5, 3, options);
  CHECK((first.lambda_b().array() == T(1)).all());
  CHECK(same_bits(first.lambda_d(), again.lambda_d()));  // independent of in/out

  options.init_seed = 124;
  const vera::adapter<T> other(p, 16, 12, options);
  for (vera::index k = 0; k < first.rank(); ++k) CHECK(first.lambda_d()(k) != other.lambda_d()(k));

  // A smaller rank gets the leading values of the same sequence.
  options.init_seed = 123;
  options.rank = 3;
  const vera::adapter<T> low_rank(p, 16, 12, options);
  CHECK(same_bits(low_rank.lambda_d(), first.lambda_d().head(3)));
}

TEST_CASE("adapter random init draws d from a standard normal", "[adapter]") {
  vera::adapter_options options;
  options.init = vera::init_kind::random;
  options.init_seed = 9;
  const vera::projection<double> p(vera::projection_spec{0, 4096, 1, 1});
  const vera::adapter<double> ad(p, 1, 1, options);
  const auto d = ad.lambda_d();
  const double mean = d.mean();
  const double variance = (d.array() - mean).square().mean();
  // 4096 draws: standard errors 1/64 ~ 0.016 for the mean and sqrt(2/4096) ~ 0.022 for the
  // variance. The bounds are ~6 standard errors; a uniform or a wrongly scaled draw misses them.
  CHECK(std::fabs(mean) < 0.1);
  CHECK(std::fabs(variance - 1.0) < 0.15);
  CHECK(d.allFinite());
}

TEMPLATE_TEST_CASE("adapter with a smaller rank slices the projection's rows", "[adapter]", float,
                   double) {
  using T = TestType;
  const auto p = shared_projection<T>();
  vera::adapter_options options;
  options.rank = 3;
  const vera::adapter<T> ad(p, 9, 5, options);
  CHECK(ad.rank() == 3);
  CHECK(ad.lambda_d().size() == 3);
  CHECK(same_bits(ad.a(), p.a().topLeftCorner(3, 9)));
  CHECK(same_bits(ad.b(), p.b().topLeftCorner(5, 3)));
  CHECK(ad.shared_projection().shares_storage_with(p));
  CHECK(ad.trainable_parameters() == 5 + 3);
}

TEMPLATE_TEST_CASE("adapter refuses layers that do not fit the projection", "[adapter]", float,
                   double) {
  using T = TestType;
  const auto p = shared_projection<T>();
  CHECK_THROWS_AS(vera::adapter<T>(p, 17, 12), vera::shape_error);
  CHECK_THROWS_WITH(vera::adapter<T>(p, 17, 12), Contains("in_features") && Contains("17"));
  CHECK_THROWS_AS(vera::adapter<T>(p, 16, 13), vera::shape_error);
  CHECK_THROWS_WITH(vera::adapter<T>(p, 16, 13), Contains("out_features") && Contains("13"));
  vera::adapter_options options;
  options.rank = 9;
  CHECK_THROWS_AS(vera::adapter<T>(p, 16, 12, options), vera::rank_error);
  CHECK_THROWS_WITH(vera::adapter<T>(p, 16, 12, options), Contains("rank") && Contains("9"));
  CHECK_THROWS_AS(vera::adapter<T>(p, 0, 12), vera::value_error);
  CHECK_THROWS_AS(vera::adapter<T>(p, 16, -1), vera::value_error);
}

TEMPLATE_TEST_CASE("adapter refuses bad options, naming the field", "[adapter]", float, double) {
  using T = TestType;
  const auto p = shared_projection<T>();
  const auto refused = [&](vera::adapter_options options, const char* field) {
    INFO(field);
    CHECK_THROWS_AS(vera::adapter<T>(p, 16, 12, options), vera::value_error);
    CHECK_THROWS_WITH(vera::adapter<T>(p, 16, 12, options), Contains(field));
  };
  vera::adapter_options options;
  options.dropout = 1.0;
  refused(options, "dropout");
  options.dropout = -0.1;
  refused(options, "dropout");
  options.dropout = std::numeric_limits<double>::quiet_NaN();
  refused(options, "dropout");
  options = {};
  options.d_initial = std::numeric_limits<double>::quiet_NaN();
  refused(options, "d_initial");
  options = {};
  options.b_initial = std::numeric_limits<double>::infinity();
  refused(options, "b_initial");
  options = {};
  options.rank = -1;
  refused(options, "rank");

  options = {};
  options.dropout = 0.999;
  CHECK_NOTHROW(vera::adapter<T>(p, 16, 12, options));
}

TEMPLATE_TEST_CASE("set_lambdas replaces both vectors or neither", "[adapter]", float, double) {
  using T = TestType;
  const auto p = shared_projection<T>();
  vera::adapter<T> ad(p, 16, 12);
  const vera::vector<T> b = vera_test::random_vector<T>(12, 1);
  const vera::vector<T> d = vera_test::random_vector<T>(8, 2);
  ad.set_lambdas(b, d);
  CHECK(same_bits(ad.lambda_b(), b));
  CHECK(same_bits(ad.lambda_d(), d));

  const vera::vector<T> b_before = ad.lambda_b();
  const vera::vector<T> d_before = ad.lambda_d();
  const auto unchanged = [&] {
    CHECK(same_bits(ad.lambda_b(), b_before));
    CHECK(same_bits(ad.lambda_d(), d_before));
  };

  CHECK_THROWS_AS(ad.set_lambdas(vera::vector<T>::Ones(11), d), vera::shape_error);
  CHECK_THROWS_WITH(ad.set_lambdas(vera::vector<T>::Ones(11), d),
                    Contains("lambda_b") && Contains("12") && Contains("11"));
  unchanged();
  CHECK_THROWS_AS(ad.set_lambdas(b, vera::vector<T>::Ones(9)), vera::shape_error);
  CHECK_THROWS_WITH(ad.set_lambdas(b, vera::vector<T>::Ones(9)), Contains("lambda_d"));
  unchanged();

  vera::vector<T> nan_b = vera::vector<T>::Ones(12);
  nan_b(4) = std::numeric_limits<T>::quiet_NaN();
  CHECK_THROWS_AS(ad.set_lambdas(nan_b, vera::vector<T>::Ones(8)), vera::value_error);
  CHECK_THROWS_WITH(ad.set_lambdas(nan_b, vera::vector<T>::Ones(8)),
                    Contains("lambda_b") && Contains("4"));
  unchanged();
  // A valid b with a bad d must not leave the new b behind.
  vera::vector<T> inf_d = vera::vector<T>::Ones(8);
  inf_d(7) = -std::numeric_limits<T>::infinity();
  CHECK_THROWS_AS(ad.set_lambdas(vera::vector<T>::Ones(12), inf_d), vera::value_error);
  CHECK_THROWS_WITH(ad.set_lambdas(vera::vector<T>::Ones(12), inf_d), Contains("lambda_d"));
  unchanged();
}

TEST_CASE("set_lambdas converts from another scalar type", "[adapter]") {
  vera::adapter<float> ad(shared_projection<float>(), 16, 12);
  const Eigen::VectorXd b = Eigen::VectorXd::LinSpaced(12, -1.0, 1.0);
  const Eigen::VectorXd d = Eigen::VectorXd::Constant(8, 0.25);
  ad.set_lambdas(b, d);
  CHECK(same_bits(ad.lambda_b(), b.cast<float>()));
  CHECK(same_bits(ad.lambda_d(), d.cast<float>()));
}

TEMPLATE_TEST_CASE("lambda views write through to the adapter", "[adapter]", float, double) {
  using T = TestType;
  vera::adapter<T> ad(shared_projection<T>(), 16, 12);
  ad.lambda_b()(3) = T(2);
  ad.lambda_d().setConstant(T(-1));
  const vera::adapter<T>& view = ad;
  CHECK(view.lambda_b()(3) == T(2));
  CHECK((view.lambda_d().array() == T(-1)).all());
}

TEMPLATE_TEST_CASE("trainable_parameters counts only the vectors that train", "[adapter]", float,
                   double) {
  using T = TestType;
  const auto p = shared_projection<T>();
  for (bool train_b : {true, false}) {
    for (bool train_d : {true, false}) {
      vera::adapter_options options;
      options.train_b = train_b;
      options.train_d = train_d;
      options.rank = 5;
      const vera::adapter<T> ad(p, 16, 12, options);
      INFO("train_b " << train_b << ", train_d " << train_d);
      CHECK(ad.trainable_parameters() == (train_b ? 12 : 0) + (train_d ? 5 : 0));
    }
  }
}

TEMPLATE_TEST_CASE("adapter copies share the projection and own their vectors", "[adapter]", float,
                   double) {
  using T = TestType;
  vera::adapter<T> ad(shared_projection<T>(), 16, 12);
  vera::adapter<T> copy = ad;
  CHECK(copy.shared_projection().shares_storage_with(ad.shared_projection()));
  copy.lambda_b().setOnes();
  CHECK((ad.lambda_b().array() == T(0)).all());
}
