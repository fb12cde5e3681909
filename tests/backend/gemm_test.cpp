// SPDX-License-Identifier: Apache-2.0
// Tests of the CPU backend's GEMM seam against a long-double reference, for every provider.
#include <catch2/catch.hpp>

#include <sstream>
#include <string>

#include <vera/vera.hpp>

#include "../support/reference.hpp"

using idx = vera::index;
using vera_test::compare;
using vera_test::wide;
using vera_test::wide_matrix;

namespace {

template <class T>
using col_matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;
template <class T>
using row_matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Budget for one dot product of length k: float operands rounded once on input (bfloat16), then
// k accumulations in float (see tolerance_factor in the reference).
template <class T>
wide budget(idx k) {
  return vera_test::tolerance_factor<T>(k + 2);
}

template <class D>
wide_matrix widen(const Eigen::MatrixBase<D>& m) {
  wide_matrix out(m.rows(), m.cols());
  for (idx j = 0; j < m.cols(); ++j) {
    for (idx i = 0; i < m.rows(); ++i) out(i, j) = static_cast<wide>(static_cast<double>(m(i, j)));
  }
  return out;
}

// Expected c0 (when accumulating) + a b, and the magnitudes |c0| + |a| |b| the budget scales.
struct expected_product {
  wide_matrix value, magnitude;
};

expected_product reference(const wide_matrix& a, const wide_matrix& b, const wide_matrix* c0) {
  expected_product e{a * b, a.cwiseAbs() * b.cwiseAbs()};
  if (c0 != nullptr) {
    e.value += *c0;
    e.magnitude += c0->cwiseAbs();
  }
  return e;
}

std::string describe(idx m, idx n, idx k, bool accumulate, const char* layout) {
  std::ostringstream os;
  os << "m " << m << ", n " << n << ", k " << k << ", accumulate " << accumulate << ", " << layout
     << ", provider " << vera::gemm_provider();
  return os.str();
}

struct extents {
  idx m, n, k;
};

const extents all_extents[] = {{0, 3, 4}, {3, 0, 4}, {5, 3, 0}, {1, 1, 1}, {1, 67, 16},
                               {7, 8, 9},  {67, 9, 127}, {127, 67, 8}, {16, 300, 33}};

// Runs dst (layout Dst) = (or +=) lhs rhs for plain, transposed and block-view operands.
template <class T, class Dst>
void check_layouts(const extents& e) {
  const auto a = vera_test::random_matrix<T>(e.m, e.k, 11);
  const auto b = vera_test::random_matrix<T>(e.k, e.n, 12);
  const auto c0 = vera_test::random_matrix<T>(e.m, e.n, 13);
  const row_matrix<T> a_row = a;
  const col_matrix<T> b_t = b.transpose();
  // A strided block: the operand sits inside a larger matrix.
  col_matrix<T> big = vera_test::random_matrix<T>(e.m + 5, e.k + 3, 14);
  big.block(2, 1, e.m, e.k) = a;
  const wide_matrix wa = widen(a), wb = widen(b), wc0 = widen(c0);

  for (const bool accumulate : {false, true}) {
    const expected_product want = reference(wa, wb, accumulate ? &wc0 : nullptr);
    const auto run = [&](const char* layout, const auto& lhs, const auto& rhs) {
      Dst dst = c0;
      vera::gemm(dst, lhs, rhs, accumulate);
      const auto result = compare(dst, want.value, want.magnitude, budget<T>(e.k));
      INFO(describe(e.m, e.n, e.k, accumulate, layout) << ": " << result);
      CHECK(result.ok());
    };
    run("column-major operands", a, b);
    run("row-major lhs", a_row, b);
    run("transposed rhs", a, b_t.transpose());
    run("block lhs", big.block(2, 1, e.m, e.k), b);
    run("transposed row-major lhs", a_row.transpose().transpose(), b);
  }
}

}  // namespace

TEMPLATE_TEST_CASE("gemm matches the reference in every layout", "[gemm]", float, double) {
  for (const extents& e : all_extents) {
    check_layouts<TestType, col_matrix<TestType>>(e);
    check_layouts<TestType, row_matrix<TestType>>(e);
  }
}

TEST_CASE("gemm writes into a strided block of a larger destination", "[gemm]") {
  const auto a = vera_test::random_matrix<float>(9, 67, 21);
  const auto b = vera_test::random_matrix<float>(67, 8, 22);
  col_matrix<float> big = vera_test::random_matrix<float>(20, 12, 23);
  const col_matrix<float> before = big;
  vera::gemm(big.block(3, 2, 9, 8), a, b, true);
  wide_matrix c0 = widen(before.block(3, 2, 9, 8));
  const expected_product want = reference(widen(a), widen(b), &c0);
  const auto result = compare(big.block(3, 2, 9, 8), want.value, want.magnitude, budget<float>(67));
  INFO(result);
  CHECK(result.ok());
  // Nothing outside the block changed.
  col_matrix<float> outside = big;
  outside.block(3, 2, 9, 8) = before.block(3, 2, 9, 8);
  CHECK(vera_test::same_bits(outside, before));
}

TEST_CASE("gemm with bfloat16 factors accumulates in float", "[gemm][bfloat16]") {
  using bf16 = Eigen::bfloat16;
  for (const extents& e : all_extents) {
    const col_matrix<bf16> a = vera_test::random_matrix<float>(e.m, e.k, 31).cast<bf16>();
    const row_matrix<bf16> b = vera_test::random_matrix<float>(e.k, e.n, 32).cast<bf16>();
    const col_matrix<float> c0 = vera_test::random_matrix<float>(e.m, e.n, 33);
    for (const bool accumulate : {false, true}) {
      // The factors are exact in float: only the float accumulation rounds, so the float budget
      // holds. bfloat16 accumulation would miss it by orders of magnitude from k ~ 10 on.
      const wide_matrix wc0 = widen(c0);
      const expected_product want = reference(widen(a), widen(b), accumulate ? &wc0 : nullptr);
      col_matrix<float> dst = c0;
      vera::gemm(dst, a, b, accumulate);
      const auto result = compare(dst, want.value, want.magnitude, budget<float>(e.k));
      INFO(describe(e.m, e.n, e.k, accumulate, "bfloat16 factors") << ": " << result);
      CHECK(result.ok());
      row_matrix<float> dst_t = c0.transpose();
      vera::gemm(dst_t, b.transpose(), a.transpose(), accumulate);
      const auto transposed =
          compare(dst_t.transpose(), want.value, want.magnitude, budget<float>(e.k));
      INFO("transposed: " << transposed);
      CHECK(transposed.ok());
    }
  }
}

TEST_CASE("the provider is the one the build asked for", "[gemm]") {
#if VERA_ONEDNN
  CHECK(std::string(vera::gemm_provider()) == "onednn");
  const col_matrix<float> a = col_matrix<float>::Ones(64, 64);
  col_matrix<float> c(64, 64);
  vera::gemm(c, a, a, false);
  // A float GEMM on plain memory ran in oneDNN, which recorded the kernel it chose.
  CHECK_FALSE(vera::detail::cpu::onednn::kernels_used().empty());
  CHECK(c(5, 7) == 64.0f);
#elif defined(EIGEN_USE_BLAS)
  CHECK(std::string(vera::gemm_provider()) == "blas");
#else
  CHECK(std::string(vera::gemm_provider()) == "eigen");
#endif
}

TEST_CASE("gemm refuses mismatched extents before writing anything", "[gemm]") {
  const col_matrix<float> a = vera_test::random_matrix<float>(4, 5, 41);
  const col_matrix<float> b = vera_test::random_matrix<float>(6, 3, 42);  // needs 5 rows
  col_matrix<float> c = vera_test::random_matrix<float>(4, 3, 43);
  const col_matrix<float> before = c;
  CHECK_THROWS_AS(vera::gemm(c, a, b, true), vera::shape_error);
  CHECK_THROWS_WITH(vera::gemm(c, a, b, false), Catch::Contains("rhs") && Catch::Contains("5 x 3"));
  const col_matrix<float> b_ok = vera_test::random_matrix<float>(5, 3, 44);
  col_matrix<float> wrong(4, 2);
  CHECK_THROWS_WITH(vera::gemm(wrong, a, b_ok, false), Catch::Contains("destination"));
  CHECK(vera_test::same_bits(c, before));
}

TEST_CASE("gemm refuses a destination that shares memory with a factor", "[gemm]") {
  col_matrix<float> a = vera_test::random_matrix<float>(6, 6, 45);
  const col_matrix<float> b = vera_test::random_matrix<float>(6, 6, 46);
  const col_matrix<float> before = a;
  CHECK_THROWS_WITH(vera::gemm(a, a, b), Catch::Contains("vera::gemm") && Catch::Contains("lhs"));
  CHECK_THROWS_WITH(vera::gemm(a.block(0, 0, 6, 6), b, a.transpose(), true), Catch::Contains("rhs"));
  CHECK(vera_test::same_bits(a, before));
}
