// SPDX-License-Identifier: Apache-2.0
// Tests of the lazy forward expression against the naive reference, in every order and layout.
#include <catch2/catch.hpp>

#include <sstream>
#include <string>

#include <vera/vera.hpp>

#include "../support/reference.hpp"

using vera_test::compare;
using vera_test::layer_shape;
using vera_test::same_bits;
using vera_test::wide;

namespace {

const vera::order all_orders[] = {vera::order::automatic, vera::order::low_rank,
                                  vera::order::merged};

std::string describe(const layer_shape& s, bool fan_in_fan_out, bool with_bias, double dropout,
                     vera::order o) {
  std::ostringstream os;
  os << "n " << s.rows << ", in " << s.in << ", out " << s.out << ", rank " << s.rank
     << ", fan_in_fan_out " << fan_in_fan_out << ", bias " << with_bias << ", dropout " << dropout
     << ", order " << static_cast<int>(o);
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

}  // namespace

TEMPLATE_TEST_CASE("forward matches the reference in every order, layout and bias setting",
                   "[expr][forward]", float, double) {
  // 2 GEMM threads send batches of 2-64 rows through the transposed arrangement.
  const int gemm_threads = GENERATE(1, 2);
  const vera_test::gemm_threads_scope threads_scope(gemm_threads);
  INFO("GEMM threads " << gemm_threads);
  using T = TestType;
  using matrix = vera_test::matrix<T>;
  std::uint32_t seed = 100;
  for (const layer_shape& shape : vera_test::edge_shapes()) {
    for (bool fan_in_fan_out : {false, true}) {
      for (bool with_bias : {false, true}) {
        // An inference forward must ignore the adapter's dropout setting.
        const double dropout = with_bias ? 0.25 : 0.0;
        const vera_test::test_layer<T> layer(shape, options_for(fan_in_fan_out, dropout), seed++);
        const auto v =
            vera_test::capture(layer.x, layer.w0, with_bias ? &layer.bias : nullptr, layer.ad);
        const auto expected = vera_test::reference_forward(v).y;
        const auto magnitude = vera_test::reference_forward(vera_test::magnitudes(v)).y;
        const matrix start = vera_test::random_matrix<T>(shape.rows, shape.out, seed++);

        vera_test::with_optional_bias<T>(with_bias, layer.bias, [&](const auto& bias) {
          for (vera::order o : all_orders) {
            INFO(describe(shape, fan_in_fan_out, with_bias, dropout, o));
            const matrix y = vera::forward(layer.x, layer.w0, bias, layer.ad).with_order(o);
            const auto c = compare(y, expected, magnitude, tolerance<T>(shape));
            INFO("Y = forward: " << c);
            CHECK(c.ok());

            matrix accumulated = start;
            vera::forward(layer.x, layer.w0, bias, layer.ad).with_order(o).add_to(accumulated);
            const auto ca =
                compare(accumulated, expected + start.template cast<wide>(),
                        magnitude + start.cwiseAbs().template cast<wide>(), tolerance<T>(shape));
            INFO("forward.add_to: " << ca);
            CHECK(ca.ok());
          }
        });
      }
    }
  }
}

TEMPLATE_TEST_CASE("training forward matches the reference and saves P for backward",
                   "[expr][forward]", float, double) {
  // 2 GEMM threads send batches of 2-64 rows through the transposed arrangement.
  const int gemm_threads = GENERATE(1, 2);
  const vera_test::gemm_threads_scope threads_scope(gemm_threads);
  INFO("GEMM threads " << gemm_threads);
  using T = TestType;
  using matrix = vera_test::matrix<T>;
  std::uint32_t seed = 200;
  for (const layer_shape& shape : vera_test::edge_shapes()) {
    for (bool fan_in_fan_out : {false, true}) {
      for (bool with_bias : {false, true}) {
        for (double dropout : {0.0, 0.25}) {
          const vera_test::test_layer<T> layer(shape, options_for(fan_in_fan_out, dropout), seed++);
          const vera::vector<T>* bias_ptr = with_bias ? &layer.bias : nullptr;
          vera::forward_context<T> ctx(seed++);
          std::uint64_t step = 0;
          vera_test::with_optional_bias<T>(with_bias, layer.bias, [&](const auto& bias) {
            for (vera::order o : all_orders) {
              INFO(describe(shape, fan_in_fan_out, with_bias, dropout, o));
              const matrix y =
                  vera::forward(layer.x, layer.w0, bias, layer.ad).train(ctx).with_order(o);
              REQUIRE(ctx.ready());
              CHECK(ctx.rows() == shape.rows);
              CHECK(ctx.mask_key().step == step++);
              CHECK(ctx.mask_key().probability == dropout);

              // The mask is rebuilt from the context's key, exactly as backward will see it.
              const auto v =
                  vera_test::capture(layer.x, layer.w0, bias_ptr, layer.ad, &ctx.mask_key());
              const auto expected = vera_test::reference_forward(v);
              const auto magnitude = vera_test::reference_forward(vera_test::magnitudes(v));
              const auto cy = compare(y, expected.y, magnitude.y, tolerance<T>(shape));
              const auto cp =
                  compare(ctx.projected(), expected.p, magnitude.p, tolerance<T>(shape));
              INFO("Y: " << cy << "\nP: " << cp);
              CHECK(cy.ok());
              CHECK(cp.ok());

              matrix accumulated = vera_test::random_matrix<T>(shape.rows, shape.out, seed++);
              const matrix start = accumulated;
              vera::forward(layer.x, layer.w0, bias, layer.ad)
                  .train(ctx)
                  .with_order(o)
                  .add_to(accumulated);
              ++step;
              const auto va =
                  vera_test::capture(layer.x, layer.w0, bias_ptr, layer.ad, &ctx.mask_key());
              const auto ca = compare(
                  accumulated, vera_test::reference_forward(va).y + start.template cast<wide>(),
                  vera_test::reference_forward(vera_test::magnitudes(va)).y +
                      start.cwiseAbs().template cast<wide>(),
                  tolerance<T>(shape));
              INFO("training add_to: " << ca);
              CHECK(ca.ok());
            }
          });
        }
      }
    }
  }
}

TEMPLATE_TEST_CASE("forward with n = 0 gives an empty result", "[expr][forward]", float, double) {
  using T = TestType;
  using matrix = vera_test::matrix<T>;
  for (double dropout : {0.0, 0.25}) {
    const vera_test::test_layer<T> layer({0, 9, 7, 6}, options_for(false, dropout), 3);
    vera::forward_context<T> ctx(1);
    for (vera::order o : all_orders) {
      const matrix y = vera::forward(layer.x, layer.w0, layer.bias, layer.ad).with_order(o);
      CHECK(y.rows() == 0);
      CHECK(y.cols() == 7);
      const matrix y_train =
          vera::forward(layer.x, layer.w0, vera::no_bias, layer.ad).train(ctx).with_order(o);
      CHECK(y_train.rows() == 0);
      CHECK(y_train.cols() == 7);
      CHECK(ctx.ready());
      CHECK(ctx.projected().rows() == 0);
      CHECK(ctx.projected().cols() == 6);
      matrix empty(0, 7);
      vera::forward(layer.x, layer.w0, layer.bias, layer.ad).with_order(o).add_to(empty);
      CHECK(empty.size() == 0);
    }
  }
}

TEMPLATE_TEST_CASE("a stored forward expression is safe and reads its operands when evaluated",
                   "[expr][forward][lifetime]", float, double) {
  using T = TestType;
  using matrix = vera_test::matrix<T>;
  vera_test::test_layer<T> layer({10, 9, 7, 6}, {}, 5);

  // The block is a temporary: the expression must hold it by value.
  auto e = vera::forward(layer.x.topRows(3), layer.w0, layer.bias, layer.ad);
  const matrix y = e;
  matrix top = layer.x.topRows(3);
  const matrix expected = vera::forward(top, layer.w0, layer.bias, layer.ad);
  CHECK(y.rows() == 3);
  CHECK(same_bits(y, expected));

  // Lazy: changing X after building the expression changes what it evaluates to.
  layer.x.topRows(3) *= T(2);
  top *= T(2);
  const matrix y_later = e;
  CHECK(same_bits(y_later, matrix(vera::forward(top, layer.w0, layer.bias, layer.ad))));
}

TEMPLATE_TEST_CASE("expression-valued operands give the same bits as evaluated ones",
                   "[expr][forward]", float, double) {
  using T = TestType;
  using matrix = vera_test::matrix<T>;
  for (double dropout : {0.0, 0.25}) {
    for (vera::index rows : {5, 150}) {
      INFO("dropout " << dropout << ", n " << rows);
      const vera_test::test_layer<T> layer({rows, 9, 7, 6}, options_for(false, dropout), 8);
      const matrix doubled = layer.x * T(2);  // scaling by 2 is exact, so bits must agree
      for (vera::order o : all_orders) {
        INFO("order " << static_cast<int>(o));
        const matrix lazy =
            vera::forward(layer.x * T(2), layer.w0, layer.bias, layer.ad).with_order(o);
        const matrix plain = vera::forward(doubled, layer.w0, layer.bias, layer.ad).with_order(o);
        CHECK(same_bits(lazy, plain));

        const matrix round_trip =
            vera::forward(layer.x.transpose().transpose(), layer.w0, layer.bias, layer.ad)
                .with_order(o);
        const matrix direct = vera::forward(layer.x, layer.w0, layer.bias, layer.ad).with_order(o);
        CHECK(same_bits(round_trip, direct));

        // Training with dropout reads the expression element by element for the masked tiles.
        vera::forward_context<T> lazy_ctx(4), plain_ctx(4);
        const matrix lazy_train = vera::forward(layer.x * T(2), layer.w0, layer.bias, layer.ad)
                                      .train(lazy_ctx)
                                      .with_order(o);
        const matrix plain_train =
            vera::forward(doubled, layer.w0, layer.bias, layer.ad).train(plain_ctx).with_order(o);
        CHECK(same_bits(lazy_train, plain_train));
        CHECK(same_bits(lazy_ctx.projected(), plain_ctx.projected()));
      }
    }
  }
}

TEMPLATE_TEST_CASE("forward accepts row-major operands and block or map destinations",
                   "[expr][forward]", float, double) {
  using T = TestType;
  using matrix = vera_test::matrix<T>;
  using row_major = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const layer_shape shape{33, 9, 7, 6};
  for (bool fan_in_fan_out : {false, true}) {
    INFO("fan_in_fan_out " << fan_in_fan_out);
    const vera_test::test_layer<T> layer(shape, options_for(fan_in_fan_out, 0.0), 9);
    const auto v = vera_test::capture(layer.x, layer.w0, &layer.bias, layer.ad);
    const auto expected = vera_test::reference_forward(v).y;
    const auto magnitude = vera_test::reference_forward(vera_test::magnitudes(v)).y;

    const row_major x_rows = layer.x;
    const row_major w_rows = layer.w0;
    const matrix y = vera::forward(x_rows, w_rows, layer.bias, layer.ad);
    CHECK(compare(y, expected, magnitude, tolerance<T>(shape)).ok());

    // Writing into part of a larger matrix leaves the rest of it alone.
    matrix big = vera_test::random_matrix<T>(shape.rows + 4, shape.out + 3, 10);
    const matrix before = big;
    big.block(2, 1, shape.rows, shape.out) = vera::forward(layer.x, layer.w0, layer.bias, layer.ad);
    CHECK(compare(big.block(2, 1, shape.rows, shape.out), expected, magnitude, tolerance<T>(shape))
              .ok());
    CHECK(same_bits(big.topRows(2), before.topRows(2)));
    CHECK(same_bits(big.bottomRows(2), before.bottomRows(2)));
    CHECK(same_bits(big.leftCols(1), before.leftCols(1)));
    CHECK(same_bits(big.rightCols(2), before.rightCols(2)));

    std::vector<T> storage(static_cast<std::size_t>(shape.rows * shape.out));
    Eigen::Map<matrix> mapped(storage.data(), shape.rows, shape.out);
    mapped = vera::forward(layer.x, layer.w0, layer.bias, layer.ad);
    CHECK(compare(mapped, expected, magnitude, tolerance<T>(shape)).ok());
  }
}

TEMPLATE_TEST_CASE("each evaluation of a training expression is a new dropout step",
                   "[expr][forward]", float, double) {
  using T = TestType;
  using matrix = vera_test::matrix<T>;
  const vera_test::test_layer<T> layer({40, 9, 7, 6}, options_for(false, 0.25), 12);
  vera::forward_context<T> ctx(6);
  const auto e = vera::forward(layer.x, layer.w0, layer.bias, layer.ad).train(ctx);
  const matrix first = e;
  CHECK(ctx.mask_key().step == 0);
  const matrix second = e;
  CHECK(ctx.mask_key().step == 1);
  CHECK_FALSE(same_bits(first, second));

  // A fresh context with the same seed replays the same masks.
  vera::forward_context<T> replay(6);
  const matrix again = vera::forward(layer.x, layer.w0, layer.bias, layer.ad).train(replay);
  CHECK(same_bits(again, first));
}
