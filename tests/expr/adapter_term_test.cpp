// SPDX-License-Identifier: Apache-2.0
// Tests of the adapter term alone, ((X A^T) Λd) (Λb B)^T, against the reference.
#include <catch2/catch.hpp>

#include <vera/vera.hpp>

#include "../support/reference.hpp"

using Catch::Matchers::Contains;
using vera_test::compare;
using vera_test::layer_shape;
using vera_test::wide;
using vera_test::wide_matrix;

namespace {

// The reference's adapter term, Q ⊙ b, row by row.
wide_matrix reference_term(const vera_test::layer_values& v) {
  const vera_test::forward_values f = vera_test::reference_forward(v);
  return f.q * v.lambda_b.asDiagonal();
}

}  // namespace

TEMPLATE_TEST_CASE("adapter_term matches the reference, overwritten and added", "[expr][adapter_term]",
                   float, double) {
  using T = TestType;
  using matrix = vera_test::matrix<T>;
  std::uint32_t seed = 900;
  vera::workspace<T> ws;
  for (const layer_shape& shape : vera_test::edge_shapes()) {
    INFO("n " << shape.rows << ", in " << shape.in << ", out " << shape.out << ", rank " << shape.rank);
    const vera_test::test_layer<T> layer(shape, vera::adapter_options{}, seed++);
    const auto v = vera_test::capture(layer.x, layer.w0, nullptr, layer.ad);
    const auto m = vera_test::magnitudes(v);
    const wide_matrix expected = reference_term(v);
    const wide_matrix magnitude = reference_term(m);
    const wide factor =
        vera_test::tolerance_factor<T>(vera_test::rounding_depth(shape.rows, shape.in, shape.out, shape.rank));

    const matrix z = vera::adapter_term(layer.x, layer.ad);
    const auto c = compare(z, expected, magnitude, factor);
    INFO("overwrite: " << c);
    CHECK(c.ok());

    // Added to an output computed elsewhere, here the base product: the forward's result.
    matrix y = layer.x * layer.w0.transpose();
    vera::adapter_term(layer.x, layer.ad).using_workspace(ws).add_to(y);
    const wide_matrix base = v.x * v.w0.transpose();
    const wide_matrix base_magnitude = m.x * m.w0.transpose();
    const auto ca = compare(y, wide_matrix(base + expected), wide_matrix(base_magnitude + magnitude), factor);
    INFO("accumulate: " << ca);
    CHECK(ca.ok());
  }
}

TEST_CASE("adapter_term refuses a wrong X and a destination that is X", "[expr][adapter_term]") {
  const vera_test::test_layer<double> layer({4, 6, 6, 3}, vera::adapter_options{}, 77);
  const Eigen::MatrixXd wrong = Eigen::MatrixXd::Ones(4, 5);
  CHECK_THROWS_AS(vera::adapter_term(wrong, layer.ad), vera::shape_error);
  CHECK_THROWS_WITH(vera::adapter_term(wrong, layer.ad), Contains("X") && Contains("6") && Contains("5"));

  Eigen::MatrixXd x = layer.x;
  const Eigen::MatrixXd before = x;
  CHECK_THROWS_AS(vera::adapter_term(x, layer.ad).add_to(x), vera::aliasing_error);
  CHECK(x == before);

  Eigen::MatrixXd big = Eigen::MatrixXd::Zero(8, 6);
  auto three_rows = big.topRows(3);
  CHECK_THROWS_AS(vera::adapter_term(x, layer.ad).assign_to(three_rows), vera::shape_error);
  CHECK(big.isZero());
}
