// SPDX-License-Identifier: Apache-2.0
// Tests of the backward expressions against the naive reference and against finite differences.
#include <catch2/catch.hpp>

#include <cmath>
#include <sstream>
#include <string>

#include <vera/vera.hpp>

#include "../support/reference.hpp"

using vera_test::compare;
using vera_test::layer_shape;
using vera_test::same_bits;
using vera_test::wide;
using vera_test::wide_matrix;

namespace {

const vera::order all_orders[] = {vera::order::automatic, vera::order::low_rank,
                                  vera::order::merged};

std::string describe(const layer_shape& s, bool fan_in_fan_out, double dropout) {
  std::ostringstream os;
  os << "n " << s.rows << ", in " << s.in << ", out " << s.out << ", rank " << s.rank
     << ", fan_in_fan_out " << fan_in_fan_out << ", dropout " << dropout;
  return os.str();
}

vera::adapter_options options_for(bool fan_in_fan_out, double dropout) {
  vera::adapter_options options;
  options.fan_in_fan_out = fan_in_fan_out;
  options.dropout = dropout;
  return options;
}

template <class T>
wide tolerance(const layer_shape& s) {
  return vera_test::tolerance_factor<T>(vera_test::rounding_depth(s.rows, s.in, s.out, s.rank));
}

template <class T>
wide_matrix widen(const vera_test::matrix<T>& m) {
  return m.template cast<wide>();
}

}  // namespace

TEMPLATE_TEST_CASE("parameter gradients match the reference, overwriting and accumulating",
                   "[expr][backward]", float, double) {
  using T = TestType;
  using matrix = vera_test::matrix<T>;
  std::uint32_t seed = 300;
  for (const layer_shape& shape : vera_test::edge_shapes()) {
    for (bool fan_in_fan_out : {false, true}) {
      for (double dropout : {0.0, 0.25}) {
        INFO(describe(shape, fan_in_fan_out, dropout));
        const vera_test::test_layer<T> layer(shape, options_for(fan_in_fan_out, dropout), seed++);
        vera::forward_context<T> ctx(seed++);
        const matrix y = vera::forward(layer.x, layer.w0, layer.bias, layer.ad).train(ctx);
        const matrix g = vera_test::random_matrix<T>(shape.rows, shape.out, seed++);
        const auto v =
            vera_test::capture(layer.x, layer.w0, &layer.bias, layer.ad, &ctx.mask_key());
        const auto expected = vera_test::reference_backward(v, widen(g));
        const auto magnitude =
            vera_test::reference_backward(vera_test::magnitudes(v), widen<T>(g.cwiseAbs()));

        // Overwrite sizes empty buffers, and replaces whatever right-sized buffers held.
        vera::gradients<T> grads;
        grads = vera::parameter_gradients(g, layer.ad, ctx);
        grads.lambda_b.setConstant(T(7));
        grads.lambda_d.setConstant(T(7));
        grads = vera::parameter_gradients(g, layer.ad, ctx);
        const auto cb =
            compare(grads.lambda_b, expected.grad_b, magnitude.grad_b, tolerance<T>(shape));
        const auto cd =
            compare(grads.lambda_d, expected.grad_d, magnitude.grad_d, tolerance<T>(shape));
        INFO("grad_b: " << cb << "\ngrad_d: " << cd);
        CHECK(cb.ok());
        CHECK(cd.ok());

        vera::gradients<T> accumulated(layer.ad);
        accumulated.lambda_b = vera_test::random_vector<T>(shape.out, seed++);
        accumulated.lambda_d = vera_test::random_vector<T>(shape.rank, seed++);
        const vera::gradients<T> start = accumulated;
        accumulated += vera::parameter_gradients(g, layer.ad, ctx);
        const auto ab =
            compare(accumulated.lambda_b, expected.grad_b + start.lambda_b.template cast<wide>(),
                    magnitude.grad_b + start.lambda_b.cwiseAbs().template cast<wide>(),
                    tolerance<T>(shape));
        const auto ad =
            compare(accumulated.lambda_d, expected.grad_d + start.lambda_d.template cast<wide>(),
                    magnitude.grad_d + start.lambda_d.cwiseAbs().template cast<wide>(),
                    tolerance<T>(shape));
        INFO("accumulated grad_b: " << ab << "\naccumulated grad_d: " << ad);
        CHECK(ab.ok());
        CHECK(ad.ok());
      }
    }
  }
}

TEMPLATE_TEST_CASE("input gradient matches the reference in both orders, overwriting and adding",
                   "[expr][backward]", float, double) {
  using T = TestType;
  using matrix = vera_test::matrix<T>;
  std::uint32_t seed = 400;
  for (const layer_shape& shape : vera_test::edge_shapes()) {
    for (bool fan_in_fan_out : {false, true}) {
      for (double dropout : {0.0, 0.25}) {
        const vera_test::test_layer<T> layer(shape, options_for(fan_in_fan_out, dropout), seed++);
        vera::forward_context<T> ctx(seed++);
        const matrix y = vera::forward(layer.x, layer.w0, vera::no_bias, layer.ad).train(ctx);
        const matrix g = vera_test::random_matrix<T>(shape.rows, shape.out, seed++);
        const auto v = vera_test::capture(layer.x, layer.w0, nullptr, layer.ad, &ctx.mask_key());
        const auto expected = vera_test::reference_backward(v, widen(g)).grad_x;
        const auto magnitude =
            vera_test::reference_backward(vera_test::magnitudes(v), widen<T>(g.cwiseAbs())).grad_x;
        const matrix start = vera_test::random_matrix<T>(shape.rows, shape.in, seed++);
        for (vera::order o : all_orders) {
          INFO(describe(shape, fan_in_fan_out, dropout) << ", order " << static_cast<int>(o));
          matrix dx = matrix::Constant(2, 3, T(5));  // wrong size on purpose: overwrite resizes
          dx = vera::input_gradient(g, layer.w0, layer.ad, ctx).with_order(o);
          const auto c = compare(dx, expected, magnitude, tolerance<T>(shape));
          INFO("dX = input_gradient: " << c);
          CHECK(c.ok());

          matrix accumulated = start;
          vera::input_gradient(g, layer.w0, layer.ad, ctx).with_order(o).add_to(accumulated);
          const auto ca = compare(accumulated, expected + widen(start),
                                  magnitude + widen<T>(start.cwiseAbs()), tolerance<T>(shape));
          INFO("input_gradient.add_to: " << ca);
          CHECK(ca.ok());
        }
      }
    }
  }
}

TEMPLATE_TEST_CASE("frozen vectors get zero on overwrite and are left alone on accumulate",
                   "[expr][backward]", float, double) {
  using T = TestType;
  using matrix = vera_test::matrix<T>;
  const layer_shape shape{13, 9, 7, 6};
  for (bool train_b : {true, false}) {
    for (bool train_d : {true, false}) {
      INFO("train_b " << train_b << ", train_d " << train_d);
      vera::adapter_options options;
      options.train_b = train_b;
      options.train_d = train_d;
      const vera_test::test_layer<T> layer(shape, options, 17);
      vera::forward_context<T> ctx(2);
      const matrix y = vera::forward(layer.x, layer.w0, layer.bias, layer.ad).train(ctx);
      const matrix g = vera_test::random_matrix<T>(shape.rows, shape.out, 18);
      const auto v = vera_test::capture(layer.x, layer.w0, &layer.bias, layer.ad, &ctx.mask_key());
      const auto expected = vera_test::reference_backward(v, widen(g));
      const auto magnitude =
          vera_test::reference_backward(vera_test::magnitudes(v), widen<T>(g.cwiseAbs()));

      vera::gradients<T> grads(layer.ad);
      grads.lambda_b.setConstant(T(3));
      grads.lambda_d.setConstant(T(3));
      grads = vera::parameter_gradients(g, layer.ad, ctx);
      if (train_b) {
        CHECK(compare(grads.lambda_b, expected.grad_b, magnitude.grad_b, tolerance<T>(shape)).ok());
      } else {
        CHECK((grads.lambda_b.array() == T(0)).all());
      }
      if (train_d) {
        CHECK(compare(grads.lambda_d, expected.grad_d, magnitude.grad_d, tolerance<T>(shape)).ok());
      } else {
        CHECK((grads.lambda_d.array() == T(0)).all());
      }

      vera::gradients<T> accumulated(layer.ad);
      accumulated.lambda_b = vera_test::random_vector<T>(shape.out, 19);
      accumulated.lambda_d = vera_test::random_vector<T>(shape.rank, 20);
      const vera::gradients<T> start = accumulated;
      accumulated += vera::parameter_gradients(g, layer.ad, ctx);
      if (train_b) {
        CHECK_FALSE(same_bits(accumulated.lambda_b, start.lambda_b));
      } else {
        CHECK(same_bits(accumulated.lambda_b, start.lambda_b));
      }
      if (train_d) {
        CHECK_FALSE(same_bits(accumulated.lambda_d, start.lambda_d));
      } else {
        CHECK(same_bits(accumulated.lambda_d, start.lambda_d));
      }
    }
  }
}

TEMPLATE_TEST_CASE("gradient expressions evaluate by conversion, eval() and eval_to",
                   "[expr][backward]", float, double) {
  using T = TestType;
  using matrix = vera_test::matrix<T>;
  const vera_test::test_layer<T> layer({21, 9, 7, 6}, options_for(false, 0.25), 23);
  vera::forward_context<T> ctx(1);
  const matrix y = vera::forward(layer.x, layer.w0, layer.bias, layer.ad).train(ctx);
  const matrix g = vera_test::random_matrix<T>(21, 7, 24);

  const vera::gradients<T> converted = vera::parameter_gradients(g, layer.ad, ctx);
  const vera::gradients<T> evaluated = vera::parameter_gradients(g, layer.ad, ctx).eval();
  vera::gradients<T> into;
  vera::parameter_gradients(g, layer.ad, ctx).eval_to(into);
  CHECK(same_bits(converted.lambda_b, evaluated.lambda_b));
  CHECK(same_bits(converted.lambda_d, evaluated.lambda_d));
  CHECK(same_bits(converted.lambda_b, into.lambda_b));
  CHECK(same_bits(converted.lambda_d, into.lambda_d));

  // An expression-valued G; doubling is exact, so the bits must be exactly twice as large.
  const vera::gradients<T> doubled = vera::parameter_gradients(g * T(2), layer.ad, ctx);
  CHECK(same_bits(doubled.lambda_b, vera::vector<T>(2 * converted.lambda_b)));
  CHECK(same_bits(doubled.lambda_d, vera::vector<T>(2 * converted.lambda_d)));
  for (vera::order o : all_orders) {
    const matrix dx = vera::input_gradient(g, layer.w0, layer.ad, ctx).with_order(o);
    const matrix dx_doubled = vera::input_gradient(g * T(2), layer.w0, layer.ad, ctx).with_order(o);
    CHECK(same_bits(dx_doubled, matrix(2 * dx)));
  }
}

TEMPLATE_TEST_CASE("backward of an empty batch gives zero gradients and an empty dX",
                   "[expr][backward]", float, double) {
  using T = TestType;
  using matrix = vera_test::matrix<T>;
  for (double dropout : {0.0, 0.25}) {
    const vera_test::test_layer<T> layer({0, 9, 7, 6}, options_for(false, dropout), 25);
    vera::forward_context<T> ctx(3);
    const matrix y = vera::forward(layer.x, layer.w0, layer.bias, layer.ad).train(ctx);
    const matrix g(0, 7);
    const vera::gradients<T> grads = vera::parameter_gradients(g, layer.ad, ctx);
    CHECK(grads.lambda_b.size() == 7);
    CHECK(grads.lambda_d.size() == 6);
    CHECK((grads.lambda_b.array() == T(0)).all());
    CHECK((grads.lambda_d.array() == T(0)).all());
    for (vera::order o : all_orders) {
      const matrix dx = vera::input_gradient(g, layer.w0, layer.ad, ctx).with_order(o);
      CHECK(dx.rows() == 0);
      CHECK(dx.cols() == 9);
    }
  }
}

namespace {

// L = sum(G ⊙ Y) for a training forward replayed from a fresh context with the same seed, so
// every perturbed forward sees the same dropout mask (step 0).
double loss(const vera_test::test_layer<double>& layer, const Eigen::MatrixXd& x,
            const Eigen::MatrixXd& g) {
  vera::forward_context<double> ctx(91);
  const Eigen::MatrixXd y = vera::forward(x, layer.w0, layer.bias, layer.ad).train(ctx);
  long double sum = 0;
  for (vera::index j = 0; j < y.cols(); ++j) {
    for (vera::index i = 0; i < y.rows(); ++i) sum += static_cast<long double>(g(i, j)) * y(i, j);
  }
  return static_cast<double>(sum);
}

// Y is affine in each single lambda_b, lambda_d or X element, so central differences carry no
// truncation error; what is left is rounding, about eps * sum|G ⊙ Y| / h ~ 1e-16 * 10 / 1e-6
// = 1e-9. 1e-6 * (1 + |gradient|) leaves three orders of magnitude of room for that while any
// wrong term of the analytic gradient (order 0.1 to 1 here) would exceed it.
bool close(double analytic, double numeric) {
  return std::fabs(analytic - numeric) <= 1e-6 * (1.0 + std::fabs(analytic));
}

}  // namespace

TEST_CASE("gradients agree with central finite differences",
          "[expr][backward][finite-difference]") {
  const double h = 1e-6;
  for (bool fan_in_fan_out : {false, true}) {
    for (double dropout : {0.0, 0.25}) {
      INFO("fan_in_fan_out " << fan_in_fan_out << ", dropout " << dropout);
      // rank 9 > in 7: the projection has more rows than the layer has inputs.
      vera_test::test_layer<double> layer({5, 7, 6, 9}, options_for(fan_in_fan_out, dropout), 90);
      const Eigen::MatrixXd g = vera_test::random_matrix<double>(5, 6, 92);
      vera::forward_context<double> ctx(91);
      const Eigen::MatrixXd y = vera::forward(layer.x, layer.w0, layer.bias, layer.ad).train(ctx);
      REQUIRE(ctx.mask_key().step == 0);
      const vera::gradients<double> grads = vera::parameter_gradients(g, layer.ad, ctx);
      const Eigen::MatrixXd dx = vera::input_gradient(g, layer.w0, layer.ad, ctx);

      for (vera::index j = 0; j < layer.ad.out_features(); ++j) {
        const double original = layer.ad.lambda_b()(j);
        layer.ad.lambda_b()(j) = original + h;
        const double plus = loss(layer, layer.x, g);
        layer.ad.lambda_b()(j) = original - h;
        const double minus = loss(layer, layer.x, g);
        layer.ad.lambda_b()(j) = original;
        const double numeric = (plus - minus) / (2 * h);
        INFO("lambda_b(" << j << "): analytic " << grads.lambda_b(j) << ", numeric " << numeric);
        CHECK(close(grads.lambda_b(j), numeric));
      }
      for (vera::index k = 0; k < layer.ad.rank(); ++k) {
        const double original = layer.ad.lambda_d()(k);
        layer.ad.lambda_d()(k) = original + h;
        const double plus = loss(layer, layer.x, g);
        layer.ad.lambda_d()(k) = original - h;
        const double minus = loss(layer, layer.x, g);
        layer.ad.lambda_d()(k) = original;
        const double numeric = (plus - minus) / (2 * h);
        INFO("lambda_d(" << k << "): analytic " << grads.lambda_d(k) << ", numeric " << numeric);
        CHECK(close(grads.lambda_d(k), numeric));
      }
      for (vera::index i = 0; i < layer.x.rows(); ++i) {
        for (vera::index l = 0; l < layer.x.cols(); ++l) {
          Eigen::MatrixXd perturbed = layer.x;
          perturbed(i, l) += h;
          const double plus = loss(layer, perturbed, g);
          perturbed(i, l) -= 2 * h;
          const double minus = loss(layer, perturbed, g);
          const double numeric = (plus - minus) / (2 * h);
          INFO("X(" << i << ", " << l << "): analytic " << dx(i, l) << ", numeric " << numeric);
          CHECK(close(dx(i, l), numeric));
        }
      }
    }
  }
}

TEST_CASE("overwriting gradients of another size throws instead of reallocating",
          "[expr][backward][errors]") {
  const vera::projection<double> shared({1, 6, 8, 8});
  const vera::adapter<double> ad(shared, 8, 8);
  vera::forward_context<double> ctx;
  const Eigen::MatrixXd x = Eigen::MatrixXd::Random(5, 8), w0 = Eigen::MatrixXd::Random(8, 8);
  const Eigen::MatrixXd y = vera::forward(x, w0, vera::no_bias, ad).train(ctx);
  const Eigen::MatrixXd g = Eigen::MatrixXd::Ones(5, 8);
  vera::gradients<double> wrong;
  wrong.lambda_b = Eigen::VectorXd::Zero(3);
  wrong.lambda_d = Eigen::VectorXd::Zero(6);
  const double* held = wrong.lambda_b.data();
  CHECK_THROWS_AS(wrong = vera::parameter_gradients(g, ad, ctx), vera::shape_error);
  CHECK(wrong.lambda_b.data() == held);
  CHECK(wrong.lambda_b.size() == 3);
  vera::gradients<double> fresh;
  fresh = vera::parameter_gradients(g, ad, ctx);
  CHECK(fresh.lambda_b.size() == 8);
  CHECK(fresh.lambda_d.size() == 6);
  CHECK(y.rows() == 5);
}
