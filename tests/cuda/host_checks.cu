// SPDX-License-Identifier: Apache-2.0
// CUDA backend checks that need no GPU: argument validation and the shared Philox code.
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include <vera/cuda.hpp>

#include "harness.cuh"
#include "reference.hpp"

namespace {

using vera::cuda::matrix_ref;

std::uint32_t bits_of(float v) {
  std::uint32_t bits = 0;
  std::memcpy(&bits, &v, sizeof bits);
  return bits;
}

// The nvcc-compiled host path of the device-capable element function against the CPU fill
// compiled by the host compiler in reference.cpp: same bits, element by element.
void philox_matches_cpu(const vera::projection_spec& spec) {
  const vera_test::host_projection cpu = vera_test::cpu_projection(spec);
  const float bound_a = vera::detail::kaiming_uniform_bound(spec.max_in);
  const float bound_b = vera::detail::kaiming_uniform_bound(spec.rank);
  int mismatches = 0;
  for (vera::index i = 0; i < spec.rank; ++i) {
    for (vera::index j = 0; j < spec.max_in; ++j) {
      const float here = vera::detail::philox_projection_element(spec.seed, 0u, i, j, bound_a);
      mismatches += bits_of(here) != bits_of(cpu.a[static_cast<std::size_t>(i * spec.max_in + j)]);
    }
  }
  for (vera::index i = 0; i < spec.max_out; ++i) {
    for (vera::index j = 0; j < spec.rank; ++j) {
      const float here = vera::detail::philox_projection_element(spec.seed, 1u, i, j, bound_b);
      mismatches += bits_of(here) != bits_of(cpu.b[static_cast<std::size_t>(i * spec.rank + j)]);
    }
  }
  VERA_CHECK(mismatches == 0);
}

void philox_checks() {
  // Random123's published Philox4x32-10 answers, through the plain-word form device code uses.
  const vera::detail::philox4x32::block zero =
      vera::detail::philox4x32::generate_block({{0u, 0u, 0u, 0u}}, 0u, 0u);
  VERA_CHECK(zero.word[0] == 0x6627e8d5u && zero.word[1] == 0xe169c58du &&
             zero.word[2] == 0xbc57ac4cu && zero.word[3] == 0x9b00dbd8u);
  const vera::detail::philox4x32::block pi = vera::detail::philox4x32::generate_block(
      {{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}}, 0xa4093822u, 0x299f31d0u);
  VERA_CHECK(pi.word[0] == 0xd16cfe09u && pi.word[1] == 0x94fdccebu && pi.word[2] == 0x5001e420u &&
             pi.word[3] == 0x24126ea1u);
  // The bits the CPU generator was released with (tests/core), through the shared function.
  const float bound_a = vera::detail::kaiming_uniform_bound(9);
  VERA_CHECK(bits_of(vera::detail::philox_projection_element(42, 0u, 1, 0, bound_a)) == 0xbec79fcfu);
  VERA_CHECK(bits_of(vera::detail::philox_projection_element(42, 0u, 1, 4, bound_a)) == 0xbf197a9du);
  philox_matches_cpu({42, 4, 9, 7, vera::generator::philox});
  philox_matches_cpu({7, 13, 67, 5, vera::generator::philox});
  philox_matches_cpu({0x123456789abcdefull, 17, 127, 33, vera::generator::philox});
}

// Stand-in addresses for device buffers: validation must reject every call below before any
// pointer is used, so these are never dereferenced.
alignas(256) float fake[64];

vera::cuda::layer_ref<float> small_layer() {
  vera::cuda::layer_ref<float> layer;
  layer.projection = {fake, fake, 8, 12, 10};
  layer.in = 9;
  layer.out = 7;
  layer.rank = 4;
  layer.lambda_b = fake;
  layer.lambda_d = fake;
  return layer;
}

matrix_ref<float> m(vera::index rows, vera::index cols) { return {fake, rows, cols, cols}; }

void validation_checks() {
  using vera::cuda::forward;
  const vera::cuda::stream_context ctx{};  // no stream, no handle: nothing may reach them
  const auto layer = small_layer();
  const std::size_t enough = vera::cuda::workspace_bytes(layer, 5);
  const vera::cuda::workspace_ref ws{fake, enough};

  VERA_CHECK_THROWS(forward(ctx, layer, m(5, 8), m(7, 9), nullptr, m(5, 7), ws), vera::shape_error,
                    "X: expected 5 x 9, got 5 x 8");
  VERA_CHECK_THROWS(forward(ctx, layer, m(5, 9), m(9, 7), nullptr, m(5, 7), ws), vera::shape_error,
                    "W0: expected 7 x 9, got 9 x 7");
  VERA_CHECK_THROWS(forward(ctx, layer, m(5, 9), m(7, 9), nullptr, m(4, 7), ws), vera::shape_error,
                    "Y: expected 5 x 7, got 4 x 7");
  VERA_CHECK_THROWS(forward(ctx, layer, matrix_ref<float>{fake, 5, 9, 8}, m(7, 9), nullptr,
                            m(5, 7), ws),
                    vera::shape_error, "X: stride 8 is smaller than its 9 columns");
  VERA_CHECK_THROWS(forward(ctx, layer, m(5, 9), m(7, 9), nullptr, m(5, 7), {fake, 16}),
                    vera::value_error, "vera::cuda::forward workspace: expected at least");
  VERA_CHECK_THROWS(forward(ctx, layer, m(5, 9), m(7, 9), nullptr, m(5, 7), {nullptr, enough}),
                    vera::value_error, "workspace: null device pointer");
  VERA_CHECK_THROWS(forward(ctx, layer, m(5, 9), m(7, 9), nullptr, m(5, 7), {fake + 1, enough}),
                    vera::value_error,
                    "vera::cuda::forward workspace: expected a 256-byte aligned address, got one 4 bytes past a boundary");

  auto wide = layer;
  wide.in = 13;
  VERA_CHECK_THROWS(forward(ctx, wide, m(5, 13), m(7, 13), nullptr, m(5, 7), ws),
                    vera::shape_error, "layer in features: layer needs 13 but the projection provides 12");
  auto deep = layer;
  deep.rank = 9;
  VERA_CHECK_THROWS(forward(ctx, deep, m(5, 9), m(7, 9), nullptr, m(5, 7), ws), vera::rank_error,
                    "layer rank: expected at most the projection rank 8, got 9");
  auto no_b = layer;
  no_b.lambda_b = nullptr;
  VERA_CHECK_THROWS(forward(ctx, no_b, m(5, 9), m(7, 9), nullptr, m(5, 7), ws), vera::value_error,
                    "lambda_b: null device pointer");
  auto conv = layer;
  conv.fan_in_fan_out = true;
  VERA_CHECK_THROWS(forward(ctx, conv, m(5, 9), m(7, 9), nullptr, m(5, 7), ws), vera::shape_error,
                    "W0: expected 9 x 7, got 7 x 9");

  const vera::dropout_key mask{1, 2, 0.25};
  const vera::dropout_key certain{1, 2, 1.0};
  VERA_CHECK_THROWS(vera::cuda::forward_train(ctx, layer, m(5, 9), m(7, 9), nullptr, m(5, 7),
                                              m(5, 3), ws, &mask),
                    vera::shape_error, "projected (P): expected 5 x 4, got 5 x 3");
  VERA_CHECK_THROWS(vera::cuda::forward_train(ctx, layer, m(5, 9), m(7, 9), nullptr, m(5, 7),
                                              m(5, 4), ws, &certain),
                    vera::value_error, "dropout probability: expected a value in [0, 1)");

  VERA_CHECK_THROWS(vera::cuda::parameter_gradients(ctx, layer, m(5, 6), m(5, 4), fake, fake, ws),
                    vera::shape_error, "G (upstream gradient): expected 5 x 7, got 5 x 6");
  VERA_CHECK_THROWS(vera::cuda::parameter_gradients(ctx, layer, m(5, 7), m(6, 4), fake, fake, ws),
                    vera::shape_error, "projected (P): expected 5 x 4, got 6 x 4");
  VERA_CHECK_THROWS(vera::cuda::input_gradient(ctx, layer, m(5, 7), m(7, 9), m(5, 7), ws),
                    vera::shape_error, "grad_X: expected 5 x 9, got 5 x 7");
  VERA_CHECK_THROWS(vera::cuda::input_gradient(ctx, layer, m(5, 7), m(7, 9), m(5, 9), {fake, 8},
                                               &mask),
                    vera::value_error, "vera::cuda::input_gradient workspace: expected at least");

  VERA_CHECK_THROWS(vera::cuda::merge(ctx, layer, m(9, 7), ws), vera::shape_error,
                    "W0: expected 7 x 9, got 9 x 7");
  VERA_CHECK_THROWS(vera::cuda::unmerge(ctx, layer, m(7, 9), {fake, 0}), vera::value_error,
                    "vera::cuda::unmerge workspace: expected at least");
  VERA_CHECK_THROWS(vera::cuda::safe_merge(ctx, layer, m(7, 9), ws, nullptr), vera::value_error,
                    "rejected flag: null device pointer");

  const vera::projection_spec peft{0, 8, 12, 10, vera::generator::peft};
  VERA_CHECK_THROWS(vera::cuda::generate_projection<float>(nullptr, peft, m(8, 12), m(10, 8)),
                    vera::value_error, "only generator::philox runs on the device");
  const vera::projection_spec philox{0, 8, 12, 10, vera::generator::philox};
  VERA_CHECK_THROWS(vera::cuda::generate_projection<float>(nullptr, philox, m(8, 12), m(8, 10)),
                    vera::shape_error, "projection B: expected 10 x 8, got 8 x 10");
}

void workspace_size_checks() {
  const auto layer = small_layer();
  // Pieces start on 256-byte boundaries: scaled B (7 x 4 floats) then P (5 x 4 floats).
  VERA_CHECK(vera::cuda::forward_workspace_bytes(layer, 5, false, false) == 256 + 5 * 4 * 4);
  VERA_CHECK(vera::cuda::forward_workspace_bytes(layer, 5, true, false) == 7 * 4 * 4);
  // M (7 x 4 floats) and one chunk of partials (4 floats).
  VERA_CHECK(vera::cuda::parameter_gradient_workspace_bytes(layer) == 256 + 4 * 4);
  VERA_CHECK(vera::cuda::merge_workspace_bytes(layer, true) == 256 + 7 * 9 * 4);
  // The merged order holds W0 + ΔW (7 x 9 floats) after scaled B, and no P of its own.
  VERA_CHECK(vera::cuda::forward_workspace_bytes(layer, 5, false, false, vera::order::merged) ==
             256 + 7 * 9 * 4);
  VERA_CHECK(vera::cuda::input_gradient_workspace_bytes(layer, 5, false, vera::order::merged) ==
             256 + 7 * 9 * 4);
  // Low-rank grad_X: scaled B, then the n x rank thin product.
  VERA_CHECK(vera::cuda::input_gradient_workspace_bytes(layer, 5, false, vera::order::low_rank) ==
             256 + 5 * 4 * 4);
  // Dropout keeps the low-rank plan whatever is requested.
  VERA_CHECK(vera::cuda::input_gradient_workspace_bytes(layer, 5, true, vera::order::merged) ==
             vera::cuda::input_gradient_workspace_bytes(layer, 5, true, vera::order::low_rank));
  const std::size_t all = vera::cuda::workspace_bytes(layer, 5);
  for (const vera::order o : {vera::order::automatic, vera::order::low_rank, vera::order::merged}) {
    for (const bool dropout : {false, true}) {
      VERA_CHECK(all >= vera::cuda::input_gradient_workspace_bytes(layer, 5, dropout, o));
      VERA_CHECK(all >= vera::cuda::forward_workspace_bytes(layer, 5, true, dropout, o));
    }
    VERA_CHECK(all >= vera::cuda::forward_workspace_bytes(layer, 5, false, false, o));
  }
}

// Outputs and the workspace must not share memory with anything the call reads. Two stand-in
// regions, the layer's and the operands', so that the only overlaps are the ones made here; every
// call below must throw before any device work.
alignas(256) float layer_memory[256];
alignas(256) float operands[4096];

void aliasing_checks() {
  using vera::cuda::dense;
  const vera::cuda::stream_context ctx{};
  vera::cuda::layer_ref<float> layer;
  layer.projection = {layer_memory, layer_memory + 96, 8, 12, 10};  // A [0, 96), B [96, 176)
  layer.in = 9;
  layer.out = 7;
  layer.rank = 4;
  layer.lambda_b = layer_memory + 200;  // [200, 207)
  layer.lambda_d = layer_memory + 210;  // [210, 214)
  float* x = operands;          // 5 x 9
  float* w0 = operands + 64;    // 7 x 9
  float* y = operands + 128;    // 5 x 7
  float* p = operands + 192;    // 5 x 4
  float* g = operands + 256;    // 5 x 7
  float* dx = operands + 512;   // 5 x 9
  float* grads = operands + 640;
  const vera::cuda::workspace_ref ws{operands + 1024, vera::cuda::workspace_bytes(layer, 5)};

  VERA_CHECK_THROWS(vera::cuda::forward(ctx, layer, dense(x, 5, 9), dense(w0, 7, 9), nullptr, dense(x + 9, 5, 7), ws),
                    vera::aliasing_error, "vera::cuda::forward: Y overlaps X; an output needs memory of its own");
  VERA_CHECK_THROWS(vera::cuda::forward(ctx, layer, dense(x, 5, 9), dense(w0, 7, 9), nullptr,
                                        dense(layer_memory + 198, 5, 7), ws),
                    vera::aliasing_error, "vera::cuda::forward: Y overlaps lambda_b");
  VERA_CHECK_THROWS(vera::cuda::forward(ctx, layer, dense(x, 5, 9), dense(w0, 7, 9), y + 30, dense(y, 5, 7), ws),
                    vera::aliasing_error, "vera::cuda::forward: Y overlaps bias");
  VERA_CHECK_THROWS(vera::cuda::forward_train(ctx, layer, dense(x, 5, 9), dense(w0, 7, 9), nullptr, dense(y, 5, 7),
                                              dense(w0 + 10, 5, 4), ws),
                    vera::aliasing_error, "vera::cuda::forward_train: projected (P) overlaps W0");
  VERA_CHECK_THROWS(vera::cuda::forward(ctx, layer, dense(x, 5, 9), dense(w0, 7, 9), nullptr, dense(y, 5, 7),
                                        {layer_memory, ws.bytes}),
                    vera::aliasing_error, "vera::cuda::forward: workspace overlaps projection A");

  VERA_CHECK_THROWS(vera::cuda::parameter_gradients(ctx, layer, dense(g, 5, 7), dense(p, 5, 4), grads, grads + 3, ws),
                    vera::aliasing_error, "vera::cuda::parameter_gradients: grad_b overlaps grad_d");
  VERA_CHECK_THROWS(vera::cuda::parameter_gradients(ctx, layer, dense(g, 5, 7), dense(p, 5, 4), grads, p + 2, ws),
                    vera::aliasing_error, "vera::cuda::parameter_gradients: grad_d overlaps projected (P)");
  VERA_CHECK_THROWS(vera::cuda::input_gradient(ctx, layer, dense(g, 5, 7), dense(w0, 7, 9), dense(dx, 5, 9),
                                               {g, ws.bytes}),
                    vera::aliasing_error, "vera::cuda::input_gradient: workspace overlaps G (upstream gradient)");
  VERA_CHECK_THROWS(vera::cuda::input_gradient(ctx, layer, dense(g, 5, 7), dense(w0, 7, 9),
                                               vera::cuda::matrix_ref<float>{w0 - 30, 5, 9, 9}, ws),
                    vera::aliasing_error, "vera::cuda::input_gradient: grad_X overlaps W0");

  VERA_CHECK_THROWS(vera::cuda::merge(ctx, layer, dense(w0, 7, 9), {w0, ws.bytes}), vera::aliasing_error,
                    "vera::cuda::merge: W0 overlaps workspace");
  VERA_CHECK_THROWS(vera::cuda::unmerge(ctx, layer, dense(layer_memory + 150, 7, 9), ws), vera::aliasing_error,
                    "vera::cuda::unmerge: W0 overlaps projection B");
  int* flag_in_w0 = reinterpret_cast<int*>(w0 + 62);
  VERA_CHECK_THROWS(vera::cuda::safe_merge(ctx, layer, dense(w0, 7, 9), ws, flag_in_w0), vera::aliasing_error,
                    "vera::cuda::safe_merge: W0 overlaps rejected flag");
  const vera::projection_spec philox{0, 8, 12, 10, vera::generator::philox};
  VERA_CHECK_THROWS(vera::cuda::generate_projection<float>(nullptr, philox, dense(operands, 8, 12),
                                                           dense(operands + 95, 10, 8)),
                    vera::aliasing_error, "projection A overlaps projection B");

  // The ranges themselves: a view ends at its last element, so touching is not overlapping, and
  // the padding after the last row is not part of a strided view.
  using vera::cuda::detail::range_of;
  const auto strided = range_of("strided", vera::cuda::matrix_ref<float>{operands, 2, 3, 10});
  VERA_CHECK(strided.end - strided.begin == 13 * sizeof(float));
  vera::cuda::detail::check_disjoint("touching", range_of("a", operands, 10), {range_of("b", operands + 10, 5)});
  vera::cuda::detail::check_disjoint("after the last row", strided, {range_of("b", operands + 13, 5)});
  vera::cuda::detail::check_disjoint("empty", range_of("a", operands, 0), {range_of("b", operands, 5)});
  VERA_CHECK_THROWS(vera::cuda::detail::check_disjoint("last element", strided, {range_of("b", operands + 12, 1)}),
                    vera::aliasing_error, "last element: strided overlaps b");
}

// The device runs the order the CPU's cost model picks for the same extents.
void order_checks() {
  using vera::order;
  vera::cuda::layer_ref<float> roberta = small_layer();
  roberta.in = roberta.out = 768;
  roberta.rank = 1024;
  vera::cuda::layer_ref<float> llama = small_layer();
  llama.in = llama.out = 4096;
  llama.rank = 256;
  for (const auto& layer : {roberta, llama}) {
    for (const vera::index n : {vera::index{1}, vera::index{16}, vera::index{512}, vera::index{4096}}) {
      const vera::detail::product_extents e{n, layer.in, layer.out, layer.rank};
      for (const bool keeps : {false, true}) {
        VERA_CHECK(vera::cuda::detail::forward_order(layer, n, keeps, false) ==
                   vera::detail::choose_order(order::automatic, vera::detail::forward_costs(e, keeps, true), true));
      }
      VERA_CHECK(vera::cuda::detail::input_gradient_order(layer, n, false) ==
                 vera::detail::choose_order(order::automatic, vera::detail::input_gradient_costs(e, true), true));
    }
  }
  // 4096 tokens: inference builds W0 + ΔW at both shapes, as does grad_X; single tokens never do.
  VERA_CHECK(vera::cuda::detail::forward_order(roberta, 4096, false, false) == order::merged);
  VERA_CHECK(vera::cuda::detail::forward_order(llama, 4096, false, false) == order::merged);
  VERA_CHECK(vera::cuda::detail::input_gradient_order(roberta, 4096, false) == order::merged);
  VERA_CHECK(vera::cuda::detail::input_gradient_order(llama, 4096, false) == order::merged);
  VERA_CHECK(vera::cuda::detail::forward_order(roberta, 1, false, false) == order::low_rank);
  VERA_CHECK(vera::cuda::detail::input_gradient_order(llama, 1, false) == order::low_rank);
  // A requested order wins, except under dropout.
  VERA_CHECK(vera::cuda::detail::forward_order(roberta, 4096, false, false, order::low_rank) == order::low_rank);
  VERA_CHECK(vera::cuda::detail::forward_order(roberta, 1, true, false, order::merged) == order::merged);
  VERA_CHECK(vera::cuda::detail::forward_order(roberta, 4096, true, true, order::merged) == order::low_rank);
  VERA_CHECK(vera::cuda::detail::input_gradient_order(roberta, 4096, true) == order::low_rank);
  // 16-bit storage: low-rank unless merged is asked for (a rounded W0 + ΔW would lose ΔW).
  vera::cuda::layer_ref<__nv_bfloat16> half_llama;
  half_llama.in = half_llama.out = 4096;
  half_llama.rank = 256;
  VERA_CHECK(vera::cuda::detail::forward_order(half_llama, 4096, false, false) == order::low_rank);
  VERA_CHECK(vera::cuda::detail::input_gradient_order(half_llama, 4096, false) == order::low_rank);
  VERA_CHECK(vera::cuda::detail::forward_order(half_llama, 4096, false, false, order::merged) == order::merged);
  VERA_CHECK(vera::cuda::detail::input_gradient_order(half_llama, 4096, true, order::merged) == order::low_rank);
  // Bad extents are refused, here and in the workspace sizes that ask for an order.
  VERA_CHECK_THROWS(vera::cuda::detail::forward_order(llama, -1, false, false), vera::value_error,
                    "vera::cuda::detail::forward_order: rows must be >= 0, got -1");
  auto no_rank = llama;
  no_rank.rank = 0;
  VERA_CHECK_THROWS(vera::cuda::detail::input_gradient_order(no_rank, 16, false), vera::value_error,
                    "layer rank: expected a positive value, got 0");
  VERA_CHECK_THROWS(vera::cuda::forward_workspace_bytes(llama, -3, false, false), vera::value_error,
                    "rows must be >= 0, got -3");
}


// A refinement of the CUDA policy: without overloads of its own it must reach the CUDA
// evaluators (the generic fallback for other policies would not compile).
struct tuned_cuda : vera::exec::cuda {};

// The front-end's expressions on device views: built by vera::forward & co. with exec::cuda,
// checked when built and when evaluated, and dispatched to the CUDA evaluators at compile time.
// Every evaluation below either throws before device work or has no rows (n = 0 returns after
// validation), so the stand-in memory is never touched; operands, layer and workspace lie in
// separate stand-in regions, as in aliasing_checks.
void expression_checks() {
  using vera::exec::cuda;
  using vera::cuda::dense;
  vera::cuda::layer_ref<float> layer;
  layer.projection = {layer_memory, layer_memory + 96, 8, 12, 10};
  layer.in = 9;
  layer.out = 7;
  layer.rank = 4;
  layer.lambda_b = layer_memory + 200;
  layer.lambda_d = layer_memory + 210;
  const auto x = [](vera::index n) { return dense(operands, n, 9); };
  const auto w0 = dense(operands + 64, 7, 9);
  const auto y = [](vera::index n, vera::index cols = 7) { return dense(operands + 128, n, cols); };
  const auto g = [](vera::index n, vera::index cols = 7) { return dense(operands + 256, n, cols); };
  float* grads = operands + 640;
  float* storage = operands + 704;
  const vera::cuda::workspace_ref ws{operands + 1024, vera::cuda::workspace_bytes(layer, 5)};
  vera::cuda::stream_context sc{};
  sc.cublas = reinterpret_cast<cublasHandle_t>(fake);  // never reached: see above

  static_assert(std::is_same_v<decltype(vera::forward(cuda{}, x(5), w0, nullptr, layer)),
                               vera::cuda::detail::forward_expr<cuda, float>>);
  static_assert(std::is_same_v<decltype(vera::forward(x(5), w0, nullptr, layer)),
                               vera::cuda::detail::forward_expr<cuda, float>>);
  static_assert(std::is_same_v<decltype(vera::delta_weight(layer)), vera::cuda::detail::delta_weight_expr<cuda, float>>);
  static_assert(vera::exec::is_cuda_policy<tuned_cuda> && !vera::exec::is_cpu_policy<tuned_cuda>);

  // Built: the operands' shapes against the layer.
  VERA_CHECK_THROWS(vera::forward(cuda{}, dense(operands, 5, 8), w0, nullptr, layer), vera::shape_error,
                    "X: expected 5 x 9, got 5 x 8");
  VERA_CHECK_THROWS(vera::forward(cuda{}, x(5), dense(operands + 64, 9, 7), nullptr, layer), vera::shape_error,
                    "W0: expected 7 x 9, got 9 x 7");
  auto deep = layer;
  deep.rank = 9;
  VERA_CHECK_THROWS(vera::delta_weight(deep), vera::rank_error, "layer rank: expected at most the projection rank 8, got 9");

  // Evaluated: the stream and workspace must be given, the destination must fit.
  const auto fwd = vera::forward(cuda{}, x(5), w0, nullptr, layer);
  VERA_CHECK(fwd.rows() == 5 && fwd.cols() == 7 && fwd.context() == nullptr);
  VERA_CHECK_THROWS(fwd.eval_to(y(5)), vera::value_error, "vera::cuda::forward: no cuBLAS handle; give the stream");
  VERA_CHECK_THROWS(fwd.on(sc).eval_to(y(5)), vera::value_error, "vera::cuda::forward: no workspace; give one");
  VERA_CHECK_THROWS(fwd.on(sc).using_workspace(ws).eval_to(y(4)), vera::shape_error, "Y: expected 5 x 7, got 4 x 7");
  VERA_CHECK_THROWS(fwd.on(sc).using_workspace({operands + 1024, 16}).add_to(y(5)), vera::value_error,
                    "vera::cuda::forward workspace: expected at least");
  VERA_CHECK_THROWS(fwd.on(sc).using_workspace(ws).add_to(dense(operands + 100, 5, 7)), vera::aliasing_error,
                    "vera::cuda::forward: Y overlaps W0");
  VERA_CHECK(fwd.with_order(vera::order::merged).requested_order() == vera::order::merged);
  VERA_CHECK(fwd.on(sc).on_stream().cublas == sc.cublas && fwd.using_workspace(ws).scratch().bytes == ws.bytes);
  // A derived tag reaches the same evaluator.
  const vera::cuda::detail::forward_expr<tuned_cuda, float> tuned(x(5), w0, nullptr, layer);
  VERA_CHECK_THROWS(tuned.eval_to(y(5)), vera::value_error, "vera::cuda::forward: no cuBLAS handle");

  // The forward context: checked when made, used by forward and backward.
  VERA_CHECK_THROWS(vera::cuda::forward_context<float>(dense(storage, 8, 4), 1.0), vera::value_error,
                    "dropout probability: expected a value in [0, 1)");
  VERA_CHECK_THROWS(vera::cuda::forward_context<float>(matrix_ref<float>{storage, 8, 4, 3}), vera::shape_error,
                    "forward_context storage: stride 3 is smaller than its 4 columns");
  vera::cuda::forward_context<float> narrow(dense(storage, 8, 3));
  VERA_CHECK_THROWS(fwd.train(narrow).on(sc).using_workspace(ws).eval_to(y(5)), vera::rank_error,
                    "forward_context: storage has 3 columns, the layer has rank 4");
  vera::cuda::forward_context<float> ctx(dense(storage, 4, 4), 0.25, 99);
  VERA_CHECK_THROWS(fwd.train(ctx).on(sc).using_workspace(ws).eval_to(y(5)), vera::shape_error,
                    "forward_context: storage holds 4 rows of P, the forward has 5");
  VERA_CHECK_THROWS(vera::parameter_gradients(cuda{}, g(5), layer, ctx), vera::state_error,
                    "the forward context holds no training forward");
  VERA_CHECK_THROWS(vera::input_gradient(g(5), w0, layer, ctx), vera::state_error,
                    "the forward context holds no training forward");
  VERA_CHECK(!ctx.ready() && ctx.next_step() == 0);

  // A training forward of no rows validates everything and enqueues nothing: the context
  // records it (rows, dropout step); a refused one leaves the context as it was.
  const auto empty = vera::forward(cuda{}, x(0), w0, nullptr, layer).train(ctx).on(sc);
  empty.using_workspace(ws).eval_to(y(0));
  VERA_CHECK(ctx.ready() && ctx.rows() == 0 && ctx.mask_key().step == 0 && ctx.next_step() == 1);
  VERA_CHECK(ctx.mask_key().seed == 99 && ctx.mask_key().probability == 0.25);
  empty.using_workspace(ws).add_to(y(0));
  VERA_CHECK(ctx.mask_key().step == 1 && ctx.next_step() == 2);
  VERA_CHECK_THROWS(empty.using_workspace({operands + 1024, 8}).eval_to(y(0)), vera::value_error,
                    "vera::cuda::forward_train workspace: expected at least");
  VERA_CHECK(ctx.ready() && ctx.mask_key().step == 1 && ctx.next_step() == 2);
  VERA_CHECK_THROWS(empty.using_workspace(ws).eval_to(y(0, 6)), vera::shape_error, "Y: expected 0 x 7, got 0 x 6");
  VERA_CHECK(ctx.next_step() == 2);
  ctx.resume_at(40);
  VERA_CHECK(ctx.next_step() == 40 && ctx.mask_key().step == 1);

  // Backward against the context: G must have the forward's rows; the rank must match.
  VERA_CHECK_THROWS(vera::parameter_gradients(cuda{}, g(5), layer, ctx), vera::shape_error,
                    "G: expected 0 rows (rows of the training forward), got 5");
  VERA_CHECK_THROWS(vera::input_gradient(cuda{}, g(0, 6), w0, layer, ctx), vera::shape_error,
                    "G: expected 7 columns (the layer's out features), got 6");
  VERA_CHECK_THROWS(vera::input_gradient(cuda{}, g(0), dense(operands + 64, 9, 7), layer, ctx), vera::shape_error,
                    "W0: expected 7 x 9, got 9 x 7");
  auto lower = layer;
  lower.rank = 3;
  VERA_CHECK_THROWS(vera::parameter_gradients(cuda{}, g(0), lower, ctx), vera::rank_error,
                    "forward_context: holds rank 4, the layer has rank 3");
  const auto dx = vera::input_gradient(cuda{}, g(0), w0, layer, ctx).with_order(vera::order::low_rank);
  VERA_CHECK(dx.rows() == 0 && dx.cols() == 9 && dx.requested_order() == vera::order::low_rank);
  VERA_CHECK_THROWS(dx.on(sc).using_workspace(ws).eval_to(dense(operands + 512, 0, 7)), vera::shape_error,
                    "grad_X: expected 0 x 9, got 0 x 7");
  const auto grads_expr = vera::parameter_gradients(cuda{}, g(0), layer, ctx);
  VERA_CHECK_THROWS(grads_expr.using_workspace(ws).eval_to({grads, grads + 8}), vera::value_error,
                    "vera::cuda::parameter_gradients: no cuBLAS handle");
  VERA_CHECK_THROWS(grads_expr.on(sc).using_workspace(ws).add_to({grads, grads + 3}), vera::aliasing_error,
                    "vera::cuda::parameter_gradients: grad_b overlaps grad_d");

  // ΔW: overwrite, merge and unmerge name their destination and operation.
  const auto delta = vera::delta_weight(layer).on(sc).using_workspace(ws);
  VERA_CHECK(delta.rows() == 7 && delta.cols() == 9);
  VERA_CHECK_THROWS(delta.eval_to(dense(operands + 64, 9, 7)), vera::shape_error,
                    "destination (ΔW): expected 7 x 9, got 9 x 7");
  VERA_CHECK_THROWS(delta.add_to(dense(operands + 1020, 7, 9)), vera::aliasing_error,
                    "vera::cuda::merge: W0 overlaps workspace");
  VERA_CHECK_THROWS(delta.subtract_from(dense(layer_memory + 150, 7, 9)), vera::aliasing_error,
                    "vera::cuda::unmerge: W0 overlaps projection B");
  VERA_CHECK_THROWS(delta.using_workspace({operands + 1024, 4}).subtract_from(w0), vera::value_error,
                    "vera::cuda::unmerge workspace: expected at least");
  VERA_CHECK_THROWS(vera::delta_weight(layer).on(sc).eval_to(w0), vera::value_error,
                    "vera::delta_weight (exec::cuda): no workspace");
  auto conv = layer;
  conv.fan_in_fan_out = true;
  VERA_CHECK(vera::delta_weight<tuned_cuda>(conv).rows() == 9 && vera::delta_weight(conv).cols() == 7);

  // W0 + ΔW into another matrix: W0's shape, no overlap with W0.
  static_assert(std::is_same_v<decltype(vera::merged_weight(w0, layer)), vera::cuda::detail::merged_weight_expr<cuda, float>>);
  VERA_CHECK_THROWS(vera::merged_weight(dense(operands + 64, 9, 7), layer), vera::shape_error, "W0: expected 7 x 9, got 9 x 7");
  const auto merged = vera::merged_weight(w0, layer).on(sc).using_workspace(ws);
  VERA_CHECK(merged.rows() == 7 && merged.cols() == 9);
  VERA_CHECK_THROWS(merged.eval_to(dense(operands + 512, 9, 7)), vera::shape_error,
                    "destination (W0 + ΔW): expected 7 x 9, got 9 x 7");
  VERA_CHECK_THROWS(merged.eval_to(dense(operands + 100, 7, 9)), vera::aliasing_error,
                    "vera::merged_weight (exec::cuda): destination (W0 + ΔW) overlaps W0");
  VERA_CHECK_THROWS(vera::merged_weight(w0, layer).on(sc).eval_to(dense(operands + 512, 7, 9)), vera::value_error,
                    "vera::merged_weight (exec::cuda): no workspace");
}

// The optimizer steps refuse bad settings and overlapping buffers before any device work.
void optimizer_checks() {
  static_assert(std::is_same_v<vera::cuda::sgd_settings, vera::optim::sgd_options> &&
                    std::is_same_v<vera::cuda::adamw_settings, vera::optim::adamw_options>,
                "the device steps take the host optimizers' settings");
  float* v = operands;         // 10 values
  float* g = operands + 64;    // 10 gradients
  float* m = operands + 128;   // 10 first moments
  float* s2 = operands + 192;  // 10 second moments
  const vera::cuda::optimizer_slot slot{v, g, m, s2, 10, true};
  VERA_CHECK_THROWS(vera::cuda::adamw_step(nullptr, {-0.1, 0.9, 0.999, 1e-8, 0.0}, 1, {slot}), vera::value_error,
                    "vera::cuda::adamw_step: lr must be in [0, inf), got -0.1");
  VERA_CHECK_THROWS(vera::cuda::adamw_step(nullptr, {1e-3, 1.0, 0.999, 1e-8, 0.0}, 1, {slot}), vera::value_error,
                    "vera::cuda::adamw_step: beta1 must be in [0, 1), got 1");
  VERA_CHECK_THROWS(vera::cuda::adamw_step(nullptr, {}, 0, {slot}), vera::value_error,
                    "vera::cuda::adamw_step: step counts from 1, got 0");
  VERA_CHECK_THROWS(vera::cuda::sgd_step(nullptr, {0.1, 0.0, 0.0, 0.0, true}, true, {slot}), vera::value_error,
                    "vera::cuda::sgd_step: nesterov needs momentum > 0 and dampening 0");
  VERA_CHECK_THROWS(vera::cuda::sgd_step(nullptr, {0.1, 0.9, 1.5, 0.0, false}, true, {slot}), vera::value_error,
                    "vera::cuda::sgd_step: dampening must be in [0, 1], got 1.5");
  VERA_CHECK_THROWS(vera::cuda::adamw_step(nullptr, {}, 1, {{v, g, m, nullptr, 10, true}}), vera::value_error,
                    "slot second: null device pointer");
  VERA_CHECK_THROWS(vera::cuda::adamw_step(nullptr, {}, 1, {{v, g, m, s2, -1, true}}), vera::value_error,
                    "vera::cuda::adamw_step: slot size must be >= 0, got -1");
  VERA_CHECK_THROWS(vera::cuda::adamw_step(nullptr, {}, 1, {{v, g, v + 5, s2, 10, true}}), vera::aliasing_error,
                    "vera::cuda::adamw_step: slot value overlaps slot state");
  VERA_CHECK_THROWS(vera::cuda::sgd_step(nullptr, {0.1, 0.9}, true, {{v, v + 9, m, nullptr, 10, true}}),
                    vera::aliasing_error, "vera::cuda::sgd_step: slot value overlaps slot gradient");
  VERA_CHECK_THROWS(vera::cuda::sgd_step(nullptr, {0.1, 0.9}, true, {slot, {m + 2, g, operands + 256, nullptr, 4, true}}),
                    vera::aliasing_error, "slot state overlaps slot value");
  VERA_CHECK_THROWS(vera::cuda::adamw_step(nullptr, {}, 1, {slot}, reinterpret_cast<int*>(s2 + 3)), vera::aliasing_error,
                    "slot second overlaps rejected flag");
  // Empty slots are skipped: nothing to check, nothing enqueued.
  bool accepted = true;
  try {
    vera::cuda::sgd_step(nullptr, {0.1}, true, {{nullptr, nullptr, nullptr, nullptr, 0, true}});
  } catch (const std::exception&) {
    accepted = false;
  }
  VERA_CHECK(accepted);
}

}  // namespace

int main() {
  philox_checks();
  validation_checks();
  workspace_size_checks();
  order_checks();
  aliasing_checks();
  expression_checks();
  optimizer_checks();
  return vera_test::summary("cuda host checks");
}
