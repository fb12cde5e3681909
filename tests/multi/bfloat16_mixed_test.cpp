// SPDX-License-Identifier: Apache-2.0
// Tests of mixed-adapter batches with bfloat16 storage (float sets): every output against the
// long-double reference over the bfloat16-rounded values, each row through its own adapter, and a
// batch on one adapter against the single-adapter bfloat16 calls, bit for bit.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include <vera/multi.hpp>

#include "../support/reference.hpp"
#include "loop_reference.hpp"

using vera_test::bfloat16_budget;
using vera_test::half;
using vera_test::half_matrix;
using vera_test::half_rows;
using vera_test::half_vector;
using vera_test::compare;
using vera_test::same_bits;
using vera_test::wide;
using vera_test::wide_matrix;
using vera_test::wide_vector;

using multi_test::all_layouts;
using multi_test::layout;
using multi_test::name;

namespace {

using vera::index;

/// Extents under test: n = 0 and 1, rank 1, out != in both ways, rank above in, and 150 rows
/// (two dropout tiles; long runs when grouped, so the passes go run by run).
const vera_test::layer_shape shapes[] = {{67, 23, 19, 11}, {1, 9, 16, 5}, {40, 8, 67, 1}, {150, 7, 9, 12}, {0, 5, 6, 3}};

/// A float set over a sliced projection with five adapters: 0 (scale 2, dropout: every row of the
/// one-adapter layout), 1 (never given rows), 2 (dropout: the adapter of "one adapter and base
/// rows"), 3 (scale -0.5, lambda_b frozen), 4 (disabled: its rows run the base model). X, W0,
/// bias and G in bfloat16.
struct fixture {
  fixture(const vera_test::layer_shape& s, bool fan_in_fan_out, double dropout, std::uint32_t seed)
      : set(vera::projection<float>({seed, s.rank + 2, s.in + 3, s.out + 2, vera::generator::philox}), s.in, s.out,
            {s.rank, fan_in_fan_out}),
        x(vera_test::random_matrix<float>(s.rows, s.in, seed + 1).cast<half>()),
        w0((fan_in_fan_out ? vera_test::random_matrix<float>(s.in, s.out, seed + 2)
                           : vera_test::random_matrix<float>(s.out, s.in, seed + 2))
               .cast<half>()),
        bias(vera_test::random_vector<float>(s.out, seed + 3).cast<half>()),
        g(vera_test::random_matrix<float>(s.rows, s.out, seed + 4).cast<half>()) {
    for (int k = 0; k < 5; ++k) {
      vera::adapter_options options;
      options.init = vera::init_kind::random;
      options.init_seed = seed + 10 + static_cast<std::uint64_t>(k);
      options.fan_in_fan_out = fan_in_fan_out;
      options.dropout = k == 0 || k == 2 ? dropout : 0.0;
      options.train_b = k != 3;
      adapters.push_back(set.add(options));
      set.lambda_b(adapters.back()) += 0.5f * vera_test::random_vector<float>(s.out, seed + 20 + static_cast<std::uint32_t>(k));
    }
    set.set_scale(adapters[0], 2.0f);
    set.set_scale(adapters[3], -0.5f);
    set.disable(adapters[4]);
  }

  /// Rows for layout `l`; adapter 1 never gets a row.
  std::vector<int> assign(layout l, std::uint32_t seed) const {
    const int choices[] = {adapters[0], adapters[2], adapters[3], adapters[4], vera::no_adapter};
    std::mt19937 rng(seed);
    std::vector<int> ids(static_cast<std::size_t>(x.rows()));
    for (int& id : ids) id = choices[rng() % 5];
    switch (l) {
      case layout::random: break;
      case layout::grouped: std::sort(ids.begin(), ids.end()); break;
      case layout::one_adapter: std::fill(ids.begin(), ids.end(), adapters[0]); break;
      case layout::one_adapter_and_base:
        for (int& id : ids) id = id == adapters[0] || id == adapters[3] ? vera::no_adapter : adapters[2];
        break;
      case layout::base_only: std::fill(ids.begin(), ids.end(), vera::no_adapter); break;
    }
    return ids;
  }

  vera::adapter_set<float> set;
  std::vector<vera::adapter_id> adapters;
  half_matrix x, w0;
  half_vector bias;
  half_matrix g;
};

/// The reference's outputs and, for each, the magnitude its error budget scales with.
struct mixed_reference {
  wide_matrix y, y_size;
  wide_matrix grad_b, grad_b_size;
  wide_matrix grad_d, grad_d_size;
  wide_matrix dx, dx_size;
};

/// Row by row through its own adapter (`ids[i]`; base rows and the disabled adapter's rows with
/// zero vectors), with the values the bfloat16 path computes with: the stored operands widened, A
/// and B rounded to bfloat16, s b and d in float32's values, row i's dropout mask from `key`.
mixed_reference reference(const fixture& f, const std::vector<int>& ids, bool with_bias, const vera::dropout_key* key) {
  const vera::adapter_set<float>& set = f.set;
  const index n = f.x.rows();
  const index out = set.out_features();
  const index rank = set.rank();
  const wide_matrix x = f.x.cast<float>().cast<wide>();
  const wide_matrix g = f.g.cast<float>().cast<wide>();
  const wide_matrix w0 = f.w0.cast<float>().cast<wide>();
  mixed_reference r{wide_matrix(n, out), wide_matrix(n, out),
                    wide_matrix::Zero(out, set.columns()), wide_matrix::Zero(out, set.columns()),
                    wide_matrix::Zero(rank, set.columns()), wide_matrix::Zero(rank, set.columns()),
                    wide_matrix(n, set.in_features()), wide_matrix(n, set.in_features())};
  std::vector<int> groups = set.ids();
  groups.push_back(vera::no_adapter);
  for (const int id : groups) {
    std::vector<index> rows;
    for (index i = 0; i < n; ++i) {
      if (ids[static_cast<std::size_t>(i)] == id) rows.push_back(i);
    }
    if (rows.empty()) continue;
    const auto count = static_cast<index>(rows.size());
    const bool active = id != vera::no_adapter && set.enabled(id);
    const wide scale = active ? static_cast<wide>(set.scale(id)) : wide(0);
    vera_test::layer_values v;
    v.x.resize(count, x.cols());
    wide_matrix g_rows(count, out);
    for (index t = 0; t < count; ++t) {
      v.x.row(t) = x.row(rows[static_cast<std::size_t>(t)]);
      g_rows.row(t) = g.row(rows[static_cast<std::size_t>(t)]);
    }
    v.w0 = set.fan_in_fan_out() ? wide_matrix(w0.transpose()) : w0;
    if (with_bias) v.bias = f.bias.cast<float>().cast<wide>();
    v.a = set.shared_projection().a_bfloat16(set.in_features(), rank).cast<float>().cast<wide>();
    v.b = set.shared_projection().b_bfloat16(out, rank).cast<float>().cast<wide>();
    v.lambda_b = active ? wide_vector(scale * set.lambda_b(id).cast<wide>()) : wide_vector(wide_vector::Zero(out));
    v.lambda_d = active ? wide_vector(set.lambda_d(id).cast<wide>()) : wide_vector(wide_vector::Zero(rank));
    v.mask = wide_matrix::Ones(count, x.cols());
    if (key != nullptr && active && set.options(id).dropout > 0.0) {
      vera::dropout_key row_key = *key;
      row_key.probability = set.options(id).dropout;
      const wide keep_scale = wide(1) / (wide(1) - static_cast<wide>(row_key.probability));
      for (index t = 0; t < count; ++t) {
        for (index j = 0; j < x.cols(); ++j) {
          v.mask(t, j) = vera::dropout_keeps(row_key, rows[static_cast<std::size_t>(t)], j) ? keep_scale : wide(0);
        }
      }
    }
    const auto m = vera_test::magnitudes(v);
    const auto forward = vera_test::reference_forward(v);
    const auto forward_size = vera_test::reference_forward(m);
    const auto backward = vera_test::reference_backward(v, g_rows);
    const auto backward_size = vera_test::reference_backward(m, g_rows.cwiseAbs());
    for (index t = 0; t < count; ++t) {
      const index i = rows[static_cast<std::size_t>(t)];
      r.y.row(i) = forward.y.row(t);
      r.y_size.row(i) = forward_size.y.row(t);
      r.dx.row(i) = backward.grad_x.row(t);
      r.dx_size.row(i) = backward_size.grad_x.row(t);
    }
    if (!active) continue;
    // d/db of (s b) is s times the reference's gradient of its lambda_b = s b.
    const index column = set.column(id);
    if (set.options(id).train_b) {
      r.grad_b.col(column) = scale * backward.grad_b;
      r.grad_b_size.col(column) = std::abs(scale) * backward_size.grad_b;
    }
    if (set.options(id).train_d) {
      r.grad_d.col(column) = backward.grad_d;
      r.grad_d_size.col(column) = backward_size.grad_d;
    }
  }
  return r;
}

std::string describe(const vera_test::layer_shape& s, bool fan_in_fan_out, double dropout, bool with_bias, layout l) {
  std::ostringstream os;
  os << "n " << s.rows << ", in " << s.in << ", out " << s.out << ", rank " << s.rank << ", fan_in_fan_out "
     << fan_in_fan_out << ", dropout " << dropout << ", bias " << with_bias << ", " << name(l) << ", provider "
     << vera::gemm_provider();
  return os.str();
}

void check(const vera_test::comparison& c, const char* what) {
  INFO(what << ": " << c);
  CHECK(c.ok());
}

/// One batch in storage type Stored (column- or row-major bfloat16), `bias` a bfloat16 vector or
/// vera::no_bias.
template <class Stored, class Bias>
void check_batch(fixture& f, const std::vector<int>& ids, layout l, const Bias& bias) {
  constexpr bool with_bias = !std::is_same_v<Bias, vera::no_bias_t>;
  const vera::adapter_set<float>& set = f.set;
  const index n = f.x.rows();
  const Stored x = f.x, w0 = f.w0, g = f.g;
  const vera::index depth = vera_test::rounding_depth(n, set.in_features(), set.out_features(), set.rank());
  const double dropout = set.options(f.adapters[0]).dropout;
  const int masked = dropout > 0.0 ? 1 : 0;
  vera::mixed_workspace<float> ws;

  // Inference: no dropout. Rounded: P (or S), s Λb B Λd or nothing, and the output.
  const auto inference = vera::mixed_forward(x, w0, bias, set, ids).using_workspace(ws);
  static_assert(std::is_same_v<std::decay_t<decltype(inference.eval())>, half_matrix>,
                "a bfloat16 mixed forward evaluates to bfloat16");
  const Stored y = inference;
  const mixed_reference plain = reference(f, ids, with_bias, nullptr);
  check(compare(y, plain.y, plain.y_size, bfloat16_budget(3, depth)), "Y (bfloat16)");
  Eigen::MatrixXf y_float = Eigen::MatrixXf::Constant(n, set.out_features(), 7.0f);
  inference.assign_to(y_float);
  check(compare(y_float, plain.y, plain.y_size, bfloat16_budget(2, depth)), "Y (float)");
  // add_to: the destination's values enter the float32 accumulator, so onto zero it is assign_to.
  Eigen::MatrixXf y_added = Eigen::MatrixXf::Zero(n, set.out_features());
  inference.add_to(y_added);
  CHECK(same_bits(y_added, y_float));

  // Base-model rows are the bfloat16 base product plus bias, whatever the other rows do.
  using accumulator = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Stored::IsRowMajor ? Eigen::RowMajor : Eigen::ColMajor>;
  accumulator base = accumulator::Zero(n, set.out_features());
  if constexpr (with_bias) base.rowwise() += bias.template cast<float>().transpose();
  if (set.fan_in_fan_out()) {
    vera::gemm(base, x, w0.transpose().transpose(), true);
  } else {
    vera::gemm(base, x, w0.transpose(), true);
  }
  const Stored base_rounded = base.template cast<half>();
  for (index i = 0; i < n; ++i) {
    const int id = ids[static_cast<std::size_t>(i)];
    if (id != vera::no_adapter && set.enabled(id)) continue;
    INFO("base row " << i);
    CHECK(same_bits(y.row(i), base_rounded.row(i)));
  }

  // Training: each row under its adapter's dropout.
  vera::mixed_context<float> ctx;
  const Stored y_train = vera::mixed_forward(x, w0, bias, set, ids).train(ctx).using_workspace(ws);
  const mixed_reference trained = reference(f, ids, with_bias, &ctx.mask_key());
  check(compare(y_train, trained.y, trained.y_size, bfloat16_budget(3 + masked, depth)), "Y (training)");

  vera::mixed_gradients<float> grads = vera::mixed_parameter_gradients(g, set, ctx).using_workspace(ws);
  // Rounded: the masked input, and P (or S, or G ⊙ b) on its way into the gradient's GEMM.
  check(compare(grads.lambda_b, trained.grad_b, trained.grad_b_size, bfloat16_budget(2 + masked, depth)), "grad_b");
  check(compare(grads.lambda_d, trained.grad_d, trained.grad_d_size, bfloat16_budget(2 + masked, depth)), "grad_d");

  const auto input_gradient = vera::mixed_input_gradient(g, w0, set, ctx).using_workspace(ws);
  static_assert(std::is_same_v<std::decay_t<decltype(input_gradient.eval())>, half_matrix>,
                "a bfloat16 mixed input gradient evaluates to bfloat16");
  const Stored dx = input_gradient;
  // Rounded: s Λb B Λd (or G ⊙ b), T ⊙ s d, and the output.
  check(compare(dx, trained.dx, trained.dx_size, bfloat16_budget(3, depth)), "grad_X (bfloat16)");
  Eigen::MatrixXf dx_float(n, set.in_features());
  input_gradient.assign_to(dx_float);
  check(compare(dx_float, trained.dx, trained.dx_size, bfloat16_budget(2, depth)), "grad_X (float)");
  Eigen::MatrixXf dx_added = Eigen::MatrixXf::Zero(n, set.in_features());
  input_gradient.add_to(dx_added);
  CHECK(same_bits(dx_added, dx_float));

  // The one-pass backward computes exactly what the two calls do.
  vera::mixed_gradients<float> both;
  Stored dx_both;
  vera::mixed_backward(g, w0, set, ctx).using_workspace(ws).eval_to(both, dx_both);
  CHECK(same_bits(both.lambda_b, grads.lambda_b));
  CHECK(same_bits(both.lambda_d, grads.lambda_d));
  CHECK(same_bits(dx_both, dx));

  if (l != layout::one_adapter || n == 0) return;
  // Every row on one adapter: the single-adapter bfloat16 calls on that adapter, its scale folded
  // into lambda_b (a power of 2, so the gradient of b is that of s b times s, exactly).
  const vera::adapter<float> single = set.to_adapter(f.adapters[0]);
  CHECK(same_bits(y, Stored(vera::forward(x, w0, bias, single))));
  vera::forward_context<float> single_ctx;
  CHECK(same_bits(y_train, Stored(vera::forward(x, w0, bias, single).train(single_ctx))));
  CHECK(same_bits(dx, Stored(vera::input_gradient(g, w0, single, single_ctx))));
  const vera::gradients<float> single_grads = vera::parameter_gradients(g, single, single_ctx);
  const index column = set.column(f.adapters[0]);
  if (n > 1) {
    // One row takes the single path's textbook form instead of M = G^T P.
    const Eigen::VectorXf scaled_b = set.scale(f.adapters[0]) * single_grads.lambda_b;
    CHECK(same_bits(grads.lambda_b.col(column), scaled_b));
    CHECK(same_bits(grads.lambda_d.col(column), single_grads.lambda_d));
  }
}

template <class Stored>
void check_layouts() {
  std::uint32_t seed = 100;
  for (const vera_test::layer_shape& s : shapes) {
    for (const bool fan_in_fan_out : {false, true}) {
      for (const double dropout : {0.0, 0.25}) {
        for (const bool with_bias : {true, false}) {
          for (const layout l : all_layouts) {
            INFO(describe(s, fan_in_fan_out, dropout, with_bias, l));
            fixture f(s, fan_in_fan_out, dropout, seed++);
            const std::vector<int> ids = f.assign(l, seed++);
            if (with_bias) {
              check_batch<Stored>(f, ids, l, f.bias);
            } else {
              check_batch<Stored>(f, ids, l, vera::no_bias);
            }
          }
        }
      }
    }
  }
}

}  // namespace

TEST_CASE("bfloat16 mixed batches match the reference and the single-adapter bfloat16 path",
          "[multi][mixed][bfloat16]") {
  SECTION("column-major operands") { check_layouts<half_matrix>(); }
  SECTION("row-major operands") { check_layouts<half_rows>(); }
}

TEST_CASE("bfloat16 mixed batches refuse the merged order and bad shapes, leaving destinations untouched",
          "[multi][mixed][bfloat16]") {
  fixture f({9, 8, 7, 4}, false, 0.0, 60);
  const std::vector<int> ids = f.assign(layout::one_adapter, 61);
  half_matrix y = half_matrix::Constant(9, 7, half(3.0f));
  vera::mixed_context<float> ctx;
  CHECK_THROWS_AS(y = vera::mixed_forward(f.x, f.w0, f.bias, f.set, ids).train(ctx).with_order(vera::order::merged),
                  vera::value_error);
  CHECK((y.cast<float>().array() == 3.0f).all());
  CHECK_FALSE(ctx.ready());
  CHECK_NOTHROW(y = vera::mixed_forward(f.x, f.w0, f.bias, f.set, ids).train(ctx).with_order(vera::order::low_rank));

  half_matrix dx = half_matrix::Constant(9, 8, half(3.0f));
  CHECK_THROWS_AS(dx = vera::mixed_input_gradient(f.g, f.w0, f.set, ctx).with_order(vera::order::merged),
                  vera::value_error);
  CHECK((dx.cast<float>().array() == 3.0f).all());
  vera::mixed_gradients<float> grads(f.set);
  grads.lambda_b.setConstant(3.0f);
  CHECK_THROWS_AS(vera::mixed_backward(f.g, f.w0, f.set, ctx).with_order(vera::order::merged).eval_to(grads, dx),
                  vera::value_error);
  CHECK((dx.cast<float>().array() == 3.0f).all());
  CHECK((grads.lambda_b.array() == 3.0f).all());

  // Shapes are checked as for float: X, W0, G and the destination.
  const half_matrix x_wrong = half_matrix::Zero(9, 5);
  CHECK_THROWS_AS(vera::mixed_forward(x_wrong, f.w0, f.bias, f.set, ids), vera::shape_error);
  const half_matrix w_wrong = half_matrix::Zero(8, 7);
  CHECK_THROWS_AS(vera::mixed_forward(f.x, w_wrong, f.bias, f.set, ids), vera::shape_error);
  const half_matrix g_wrong = half_matrix::Zero(9, 6);
  CHECK_THROWS_AS(vera::mixed_parameter_gradients(g_wrong, f.set, ctx), vera::shape_error);
  half_matrix y_wrong = half_matrix::Constant(9, 6, half(3.0f));
  CHECK_THROWS_AS(vera::mixed_forward(f.x, f.w0, f.bias, f.set, ids).assign_to(y_wrong), vera::shape_error);
  CHECK((y_wrong.cast<float>().array() == 3.0f).all());
  half_matrix dx_wrong = half_matrix::Constant(9, 5, half(3.0f));
  CHECK_THROWS_AS(vera::mixed_input_gradient(f.g, f.w0, f.set, ctx).assign_to(dx_wrong), vera::shape_error);
  CHECK((dx_wrong.cast<float>().array() == 3.0f).all());
}

TEST_CASE("a float mixed batch on one adapter takes a forced order", "[multi][mixed]") {
  fixture f({33, 8, 7, 4}, false, 0.0, 70);
  const std::vector<int> ids = f.assign(layout::one_adapter, 71);
  const Eigen::MatrixXf x = f.x.cast<float>(), w0 = f.w0.cast<float>(), g = f.g.cast<float>();
  const Eigen::VectorXf bias = f.bias.cast<float>();
  vera::mixed_context<float> ctx;
  const Eigen::MatrixXf low = vera::mixed_forward(x, w0, bias, f.set, ids).train(ctx).with_order(vera::order::low_rank);
  const Eigen::MatrixXf merged = vera::mixed_forward(x, w0, bias, f.set, ids).with_order(vera::order::merged);
  CHECK(multi_test::relative_gap(merged, low) <= multi_test::tolerance<float>());
  const Eigen::MatrixXf dx_low = vera::mixed_input_gradient(g, w0, f.set, ctx).with_order(vera::order::low_rank);
  const Eigen::MatrixXf dx_merged = vera::mixed_input_gradient(g, w0, f.set, ctx).with_order(vera::order::merged);
  CHECK(multi_test::relative_gap(dx_merged, dx_low) <= multi_test::tolerance<float>());
}
