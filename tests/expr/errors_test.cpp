// SPDX-License-Identifier: Apache-2.0
// Tests that bad input throws the right exception, names the operand, and changes nothing.
#include <catch2/catch.hpp>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>

#include <vera/vera.hpp>

#include "../support/reference.hpp"

#if defined(__unix__) || defined(__APPLE__)
#include <sys/wait.h>
#include <unistd.h>

#define VERA_TEST_HAS_FORK 1
#else
#define VERA_TEST_HAS_FORK 0
#endif

using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;
using vera_test::same_bits;

namespace {

vera::adapter_options layout(bool fan_in_fan_out) {
  vera::adapter_options options;
  options.fan_in_fan_out = fan_in_fan_out;
  return options;
}

}  // namespace

TEMPLATE_TEST_CASE("forward refuses operands of the wrong shape and writes nothing",
                   "[expr][errors]", float, double) {
  using T = TestType;
  using matrix = vera_test::matrix<T>;
  for (bool fan_in_fan_out : {false, true}) {
    INFO("fan_in_fan_out " << fan_in_fan_out);
    const vera_test::test_layer<T> layer({6, 9, 7, 5}, layout(fan_in_fan_out), 50);
    matrix y = vera_test::random_matrix<T>(6, 7, 51);
    const matrix before = y;
    vera::forward_context<T> ctx(1);

    const matrix x_bad = matrix::Ones(6, 8);
    CHECK_THROWS_AS(y = vera::forward(x_bad, layer.w0, layer.bias, layer.ad), vera::shape_error);
    CHECK_THROWS_WITH(y = vera::forward(x_bad, layer.w0, layer.bias, layer.ad),
                      StartsWith("X:") && Contains("9") && Contains("8"));
    CHECK_THROWS_AS(y = vera::forward(x_bad, layer.w0, layer.bias, layer.ad).train(ctx),
                    vera::shape_error);

    // The layout the options do not ask for (a transposed W0) is as wrong as any other shape.
    const matrix w_transposed = layer.w0.transpose();
    CHECK_THROWS_AS(y = vera::forward(layer.x, w_transposed, layer.bias, layer.ad),
                    vera::shape_error);
    CHECK_THROWS_WITH(y = vera::forward(layer.x, w_transposed, layer.bias, layer.ad),
                      StartsWith("W0:") && Contains(fan_in_fan_out ? "9 x 7" : "7 x 9") &&
                          Contains(fan_in_fan_out ? "got 7 x 9" : "got 9 x 7"));

    const vera::vector<T> bias_bad = vera::vector<T>::Ones(6);
    CHECK_THROWS_AS(y = vera::forward(layer.x, layer.w0, bias_bad, layer.ad), vera::shape_error);
    CHECK_THROWS_WITH(y = vera::forward(layer.x, layer.w0, bias_bad, layer.ad),
                      StartsWith("bias:") && Contains("7") && Contains("6"));

    matrix wrong_destination = matrix::Ones(6, 8);
    CHECK_THROWS_AS(
        vera::forward(layer.x, layer.w0, layer.bias, layer.ad).add_to(wrong_destination),
        vera::shape_error);
    CHECK_THROWS_WITH(
        vera::forward(layer.x, layer.w0, layer.bias, layer.ad).train(ctx).add_to(wrong_destination),
        StartsWith("destination:") && Contains("6 x 7") && Contains("6 x 8"));
    CHECK((wrong_destination.array() == T(1)).all());

    CHECK(same_bits(y, before));
    CHECK_FALSE(ctx.ready());  // a refused training forward does not start a step
  }
}

TEMPLATE_TEST_CASE("backward refuses a missing forward, a wrong G and wrong buffers",
                   "[expr][errors]", float, double) {
  using T = TestType;
  using matrix = vera_test::matrix<T>;
  for (bool fan_in_fan_out : {false, true}) {
    INFO("fan_in_fan_out " << fan_in_fan_out);
    const vera_test::test_layer<T> layer({6, 9, 7, 5}, layout(fan_in_fan_out), 52);
    const matrix g = vera_test::random_matrix<T>(6, 7, 53);
    vera::gradients<T> grads(layer.ad);
    grads.lambda_b.setConstant(T(4));
    grads.lambda_d.setConstant(T(4));
    const vera::gradients<T> grads_before = grads;
    matrix dx = vera_test::random_matrix<T>(6, 9, 54);
    const matrix dx_before = dx;
    const auto nothing_written = [&] {
      CHECK(same_bits(grads.lambda_b, grads_before.lambda_b));
      CHECK(same_bits(grads.lambda_d, grads_before.lambda_d));
      CHECK(same_bits(dx, dx_before));
    };

    vera::forward_context<T> ctx(2);
    CHECK_THROWS_AS(grads = vera::parameter_gradients(g, layer.ad, ctx), vera::state_error);
    CHECK_THROWS_AS(grads += vera::parameter_gradients(g, layer.ad, ctx), vera::state_error);
    CHECK_THROWS_AS(dx = vera::input_gradient(g, layer.w0, layer.ad, ctx), vera::state_error);
    CHECK_THROWS_WITH(dx = vera::input_gradient(g, layer.w0, layer.ad, ctx), Contains("train"));
    nothing_written();

    const matrix y = vera::forward(layer.x, layer.w0, layer.bias, layer.ad).train(ctx);
    const matrix g_cols = matrix::Ones(6, 8);
    CHECK_THROWS_AS(grads = vera::parameter_gradients(g_cols, layer.ad, ctx), vera::shape_error);
    CHECK_THROWS_WITH(grads = vera::parameter_gradients(g_cols, layer.ad, ctx),
                      StartsWith("G:") && Contains("7") && Contains("8"));
    const matrix g_rows = matrix::Ones(5, 7);
    CHECK_THROWS_AS(grads += vera::parameter_gradients(g_rows, layer.ad, ctx), vera::shape_error);
    CHECK_THROWS_WITH(dx = vera::input_gradient(g_rows, layer.w0, layer.ad, ctx),
                      StartsWith("G:") && Contains("6 rows") && Contains("got 5"));
    const matrix w_transposed = layer.w0.transpose();
    CHECK_THROWS_AS(dx = vera::input_gradient(g, w_transposed, layer.ad, ctx), vera::shape_error);
    CHECK_THROWS_WITH(dx = vera::input_gradient(g, w_transposed, layer.ad, ctx), StartsWith("W0:"));
    nothing_written();

    vera::gradients<T> undersized;  // accumulate needs buffers of the right size
    undersized.lambda_b = vera::vector<T>::Ones(7);
    undersized.lambda_d = vera::vector<T>::Ones(4);
    CHECK_THROWS_AS(undersized += vera::parameter_gradients(g, layer.ad, ctx), vera::shape_error);
    CHECK_THROWS_WITH(undersized += vera::parameter_gradients(g, layer.ad, ctx),
                      Contains("gradients.lambda_d") && Contains("5") && Contains("4"));
    CHECK((undersized.lambda_b.array() == T(1)).all());
    CHECK((undersized.lambda_d.array() == T(1)).all());

    matrix wrong_destination = matrix::Ones(6, 8);
    CHECK_THROWS_AS(vera::input_gradient(g, layer.w0, layer.ad, ctx).add_to(wrong_destination),
                    vera::shape_error);
    CHECK_THROWS_WITH(vera::input_gradient(g, layer.w0, layer.ad, ctx).add_to(wrong_destination),
                      StartsWith("destination:"));
    CHECK((wrong_destination.array() == T(1)).all());

    // A context filled by a layer of another rank cannot feed this one.
    vera::adapter_options narrower = layout(fan_in_fan_out);
    narrower.rank = 3;
    const vera::adapter<T> other(layer.projection, 9, 7, narrower);
    vera::forward_context<T> other_ctx(3);
    const matrix y_other = vera::forward(layer.x, layer.w0, layer.bias, other).train(other_ctx);
    CHECK_THROWS_AS(grads = vera::parameter_gradients(g, layer.ad, other_ctx), vera::rank_error);
    CHECK_THROWS_AS(dx = vera::input_gradient(g, layer.w0, layer.ad, other_ctx), vera::rank_error);
    nothing_written();
  }
}

TEMPLATE_TEST_CASE("a destination that overlaps an operand is refused before anything is written",
                   "[expr][errors][aliasing]", float, double) {
  using T = TestType;
  using matrix = vera_test::matrix<T>;
  // n = in = out so that the destination could be any of the operands.
  vera_test::test_layer<T> layer({8, 8, 8, 5}, {}, 55);
  vera::forward_context<T> ctx(4);

  {
    matrix y = layer.x;
    const matrix before = y;
    CHECK_THROWS_AS(y = vera::forward(y, layer.w0, layer.bias, layer.ad), vera::aliasing_error);
    CHECK_THROWS_WITH(y = vera::forward(y, layer.w0, layer.bias, layer.ad).train(ctx),
                      Contains("vera::forward") && Contains("operand X"));
    CHECK_THROWS_AS(vera::forward(y, layer.w0, layer.bias, layer.ad).add_to(y),
                    vera::aliasing_error);
    CHECK(same_bits(y, before));
    CHECK_FALSE(ctx.ready());
  }
  {
    matrix w = layer.w0;
    const matrix before = w;
    CHECK_THROWS_AS(w = vera::forward(layer.x, w, layer.bias, layer.ad), vera::aliasing_error);
    CHECK_THROWS_WITH(w = vera::forward(layer.x, w, layer.bias, layer.ad), Contains("operand W0"));
    CHECK(same_bits(w, before));
  }
  {
    matrix y = vera_test::random_matrix<T>(8, 8, 56);
    const matrix before = y;
    CHECK_THROWS_AS(y = vera::forward(layer.x, layer.w0, y.col(3), layer.ad), vera::aliasing_error);
    CHECK_THROWS_WITH(y = vera::forward(layer.x, layer.w0, y.col(3), layer.ad),
                      Contains("operand bias"));
    CHECK(same_bits(y, before));
  }
  {
    // Partial overlap between blocks of one buffer: columns 6..7 are shared.
    matrix buffer = vera_test::random_matrix<T>(8, 14, 57);
    const matrix before = buffer;
    CHECK_THROWS_AS(
        buffer.rightCols(8) = vera::forward(buffer.leftCols(8), layer.w0, layer.bias, layer.ad),
        vera::aliasing_error);
    CHECK(same_bits(buffer, before));
    // Disjoint blocks of the same buffer are fine.
    matrix wide_buffer = vera_test::random_matrix<T>(8, 16, 58);
    const matrix input = wide_buffer.leftCols(8);
    wide_buffer.rightCols(8) =
        vera::forward(wide_buffer.leftCols(8), layer.w0, layer.bias, layer.ad);
    CHECK(same_bits(wide_buffer.leftCols(8), input));
    CHECK(same_bits(matrix(wide_buffer.rightCols(8)),
                    matrix(vera::forward(input, layer.w0, layer.bias, layer.ad))));
  }

  const matrix y = vera::forward(layer.x, layer.w0, layer.bias, layer.ad).train(ctx);
  {
    matrix g = vera_test::random_matrix<T>(8, 8, 59);
    const matrix before = g;
    CHECK_THROWS_AS(g = vera::input_gradient(g, layer.w0, layer.ad, ctx), vera::aliasing_error);
    CHECK_THROWS_WITH(g = vera::input_gradient(g, layer.w0, layer.ad, ctx),
                      Contains("vera::input_gradient") && Contains("operand G"));
    CHECK_THROWS_AS(vera::input_gradient(g, layer.w0, layer.ad, ctx).add_to(g),
                    vera::aliasing_error);
    CHECK(same_bits(g, before));
  }
  {
    const matrix g = vera_test::random_matrix<T>(8, 8, 60);
    matrix w = layer.w0;
    const matrix before = w;
    CHECK_THROWS_AS(w = vera::input_gradient(g, w, layer.ad, ctx), vera::aliasing_error);
    CHECK_THROWS_WITH(w = vera::input_gradient(g, w, layer.ad, ctx), Contains("operand W0"));
    CHECK(same_bits(w, before));
  }
  {
    matrix w = layer.w0;
    const matrix before = w;
    CHECK_THROWS_AS(w = vera::merged_weight(w, layer.ad), vera::aliasing_error);
    CHECK_THROWS_WITH(w = vera::merged_weight(w, layer.ad), Contains("operand W0"));
    CHECK(same_bits(w, before));
  }
}

#if VERA_TEST_HAS_FORK

namespace {

enum class outcome { shape_error, no_error, other_exception, crashed };

// Runs `body` in a child process, so that an assertion failure inside Eigen counts as one failed
// check instead of ending the whole run.
template <class F>
outcome outcome_in_child(F&& body) {
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    // The test framework's crash handlers would report the child's abort as the parent's.
    for (int sig : {SIGABRT, SIGSEGV, SIGILL, SIGFPE, SIGBUS}) std::signal(sig, SIG_DFL);
    if (std::freopen("/dev/null", "w", stderr) == nullptr) std::_Exit(4);
    int code = 1;
    try {
      body();
    } catch (const vera::shape_error&) {
      code = 0;
    } catch (...) {
      code = 2;
    }
    std::_Exit(code);
  }
  int status = 0;
  if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) return outcome::crashed;
  switch (WEXITSTATUS(status)) {
    case 0:
      return outcome::shape_error;
    case 1:
      return outcome::no_error;
    case 2:
      return outcome::other_exception;
    default:
      return outcome::crashed;
  }
}

// Evaluates `assign(big)` into a zero matrix and lets a shape_error through only when nothing was
// written: an error raised after a partial write would still have corrupted the caller's data.
template <class Assign>
void assign_into_zeros(Assign&& assign) {
  Eigen::MatrixXf big = Eigen::MatrixXf::Zero(10, 10);
  try {
    assign(big);
  } catch (const vera::shape_error&) {
    if (!(big.array() == 0.0f).all()) throw std::logic_error("shape_error after writing");
    throw;
  }
}

const char* name(outcome o) {
  switch (o) {
    case outcome::shape_error:
      return "shape_error";
    case outcome::no_error:
      return "no error (wrote out of the destination's shape)";
    case outcome::other_exception:
      return "another exception, or a shape_error after writing";
    default:
      return "crashed (Eigen assertion or signal)";
  }
}

}  // namespace

TEST_CASE("evaluating into a fixed-size destination of the wrong shape throws shape_error",
          "[expr][errors]") {
  // Eigen resizes a plain matrix before handing it to evalTo, but a block or a map cannot be
  // resized: `dst.block(...) = expr` must be checked like add_to checks its destination.
  using matrix = Eigen::MatrixXf;
  vera_test::test_layer<float> layer({6, 9, 7, 5}, {}, 61);
  vera::forward_context<float> ctx(5);
  const matrix y = vera::forward(layer.x, layer.w0, layer.bias, layer.ad).train(ctx);
  const matrix g = vera_test::random_matrix<float>(6, 7, 62);

  {
    const outcome forward = outcome_in_child([&] {
      assign_into_zeros([&](matrix& big) {
        big.topLeftCorner(4, 7) = vera::forward(layer.x, layer.w0, layer.bias, layer.ad);
      });
    });
    INFO("forward into a 4 x 7 block (needs 6 x 7): " << name(forward));
    CHECK(forward == outcome::shape_error);
  }
  {
    const outcome input_gradient = outcome_in_child([&] {
      assign_into_zeros([&](matrix& big) {
        big.topLeftCorner(6, 5) = vera::input_gradient(g, layer.w0, layer.ad, ctx);
      });
    });
    INFO("input_gradient into a 6 x 5 block (needs 6 x 9): " << name(input_gradient));
    CHECK(input_gradient == outcome::shape_error);
  }
  {
    const outcome delta = outcome_in_child([&] {
      assign_into_zeros(
          [&](matrix& big) { big.topLeftCorner(7, 8) = vera::delta_weight(layer.ad); });
    });
    INFO("delta_weight into a 7 x 8 block (needs 7 x 9): " << name(delta));
    CHECK(delta == outcome::shape_error);
  }
  {
    const outcome merged = outcome_in_child([&] {
      assign_into_zeros(
          [&](matrix& big) { big.topLeftCorner(5, 9) = vera::merged_weight(layer.w0, layer.ad); });
    });
    INFO("merged_weight into a 5 x 9 block (needs 7 x 9): " << name(merged));
    CHECK(merged == outcome::shape_error);
  }
}

#endif
