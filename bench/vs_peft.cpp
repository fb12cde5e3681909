// SPDX-License-Identifier: Apache-2.0
// vera's side of the comparison with PyTorch + PEFT (bench/vs_peft.py): one layer's outputs checked
// against PEFT's fixture, then timed, printed as JSON lines.
//
// Usage: vs_peft_<provider> --fixture F.safetensors --dtype float32|bfloat16 --threads T --repeats R
// The fixture comes from bench/peft_cpu.py; the exit status is 2 when an output does not match it.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <omp.h>

#include <vera/io.hpp>
#include <vera/multi.hpp>
#include <vera/vera.hpp>

namespace {

using row_f = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using row_h = Eigen::Matrix<Eigen::bfloat16, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

struct options {
  std::string fixture;
  std::string dtype = "float32";
  int threads = 1;
  int repeats = 20;
};

options parse(int argc, char** argv) {
  options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string key = argv[i];
    const std::string value = argv[i + 1];
    if (key == "--fixture") {
      o.fixture = value;
    } else if (key == "--dtype") {
      o.dtype = value;
    } else if (key == "--threads") {
      o.threads = std::stoi(value);
    } else if (key == "--repeats") {
      o.repeats = std::stoi(value);
    } else {
      std::fprintf(stderr, "vs_peft: unknown option %s\n", key.c_str());
      std::exit(1);
    }
  }
  if (o.fixture.empty() || (o.dtype != "float32" && o.dtype != "bfloat16")) {
    std::fprintf(stderr, "usage: vs_peft --fixture F --dtype float32|bfloat16 [--threads T] [--repeats R]\n");
    std::exit(1);
  }
  return o;
}

row_f load(const vera::io::safetensors_file& file, const char* name, vera::index rows, vera::index cols) {
  const std::vector<float> values = file.values<float>(name);
  return Eigen::Map<const row_f>(values.data(), rows, cols);
}

double median_ms(const std::function<void()>& step, int repeats) {
  for (int i = 0; i < 3; ++i) step();
  std::vector<double> times;
  for (int i = 0; i < repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    step();
    times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  std::nth_element(times.begin(), times.begin() + times.size() / 2, times.end());
  return times[times.size() / 2];
}

// Largest |a - b| over the largest |b|: one number per output, printed and checked.
template <class A>
double relative_error(const A& actual, const row_f& expected) {
  const double scale = std::max(1e-30, static_cast<double>(expected.cwiseAbs().maxCoeff()));
  return static_cast<double>((actual.template cast<float>() - expected).cwiseAbs().maxCoeff()) / scale;
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown";
}

// One layer in storage type S: the fixture's operands, vera's results, the timed steps.
template <class S>
int run(const options& o, const vera::io::safetensors_file& file) {
  using storage = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const auto& meta = file.metadata();
  const vera::index n = std::stol(meta.at("n")), in = std::stol(meta.at("in")),
                    out = std::stol(meta.at("out")), r = std::stol(meta.at("r"));
  // Fixtures are named <shape>_<dtype>.safetensors.
  const std::string stem = std::filesystem::path(o.fixture).stem().string();
  const std::string shape = stem.substr(0, stem.rfind('_'));
  const storage x = load(file, "x", n, in).cast<S>();
  const storage w0 = load(file, "w0", out, in).cast<S>();
  const Eigen::Matrix<S, Eigen::Dynamic, 1> bias = load(file, "bias", out, 1).cast<S>();
  const storage g = load(file, "g", n, out).cast<S>();
  // The pair PEFT used, taken as given (bfloat16 values stay exact in float).
  const vera::projection<float> shared(vera::projection_spec{static_cast<std::uint64_t>(std::stoull(meta.at("seed"))), r, in, out},
                                       load(file, "vera_A", r, in), load(file, "vera_B", out, r));
  vera::adapter<float> ad(shared, in, out);
  ad.set_lambdas(load(file, "lambda_b", out, 1).col(0), load(file, "lambda_d", r, 1).col(0));

  vera::forward_context<float> ctx;
  vera::workspace<float> ws;
  vera::gradients<float> grads(ad);
  storage y(n, out), dx(n, in);
  const auto forward_train = [&] { y = vera::forward(x, w0, bias, ad).train(ctx).using_workspace(ws); };
  const auto backward_bd = [&] { grads = vera::parameter_gradients(g, ad, ctx).using_workspace(ws); };
  const auto backward_x = [&] { dx = vera::input_gradient(g, w0, ad, ctx).using_workspace(ws); };
  // W0 + ΔW in W0's dtype (merge_and_unload's weight).
  storage merged_s(out, in);
  const auto merge = [&] {
    merged_s = w0;
    vera::merge(merged_s, ad, &ws);
  };

  forward_train();
  backward_bd();
  backward_x();
  merge();
  const double tolerance = std::is_same_v<S, float> ? 1e-4 : 3e-2;
  const double errors[] = {relative_error(y, load(file, "y", n, out)),
                           relative_error(grads.lambda_b.transpose(), load(file, "grad_lambda_b", 1, out)),
                           relative_error(grads.lambda_d.transpose(), load(file, "grad_lambda_d", 1, r)),
                           relative_error(dx, load(file, "grad_x", n, in)),
                           relative_error(merged_s, load(file, "merged", out, in))};
  const char* names[] = {"y", "grad_lambda_b", "grad_lambda_d", "grad_x", "merged"};
  bool ok = true;
  std::string checks;
  for (int i = 0; i < 5; ++i) {
    ok = ok && errors[i] <= tolerance;
    checks += std::string(i ? ", " : "") + "\"" + names[i] + "\": " + std::to_string(errors[i]);
  }

  const std::string side = std::string("vera-") + vera::gemm_provider();
  std::string kernels;
#if VERA_ONEDNN
  for (const auto& k : vera::detail::cpu::onednn::kernels_used()) kernels += (kernels.empty() ? "" : ", ") + k;
#else
  kernels = vera::gemm_provider();
#endif
  std::printf("{\"side\": \"%s\", \"info\": {\"cpu\": \"%s\", \"kernels\": \"%s\", \"shape\": \"%s\", "
              "\"dtype\": \"%s\", \"tolerance\": %g, \"max_relative_error\": {%s}}}\n",
              side.c_str(), cpu_model().c_str(), kernels.c_str(), shape.c_str(), o.dtype.c_str(), tolerance,
              checks.c_str());
  if (!ok) {
    std::fprintf(stderr, "vs_peft: %s %s: outputs differ from PEFT's beyond %g: %s\n", shape.c_str(),
                 o.dtype.c_str(), tolerance, checks.c_str());
    return 2;
  }

  vera::adapter<float> k_ad(shared, in, out), v_ad(shared, in, out);
  vera::sibling_context<float> s_ctx;
  vera::gradients<float> k_grads(k_ad), v_grads(v_ad);
  storage yk(n, out), yv(n, out);
  // Gradients of Y for k and v: G with its rows rotated, so that the three differ.
  storage gk(n, out), gv(n, out);
  for (Eigen::Index i = 0; i < n; ++i) {
    gk.row(i) = g.row((i + 1) % n);
    gv.row(i) = g.row((i + 2) % n);
  }
  row_f floor_y(n, out), floor_dx(n, in);
  // Every GEMM of fwd_bwd_bdx on the same provider, operands in S and float32 results as vera's
  // accumulators: X W0^T, X A^T, P Bbd^T, G^T P, G W0, G Bbd, T A. What vera adds on top of it
  // is the elementwise work (scales, casts, rounding, the gradient pass).
  const storage a_s = ad.a().template cast<S>();
  const storage bbd_s = (ad.lambda_b().asDiagonal() * ad.b() * ad.lambda_d().asDiagonal()).template cast<S>();
  const storage p_s = storage::Ones(n, r), t_s = storage::Ones(n, r);
  row_f full_p(n, r), full_m(out, r), full_t(n, r);
  const std::vector<std::pair<const char*, std::function<void()>>> steps = {
      {"forward", [&] { y = vera::forward(x, w0, bias, ad).using_workspace(ws); }},
      {"fwd_bwd_bd", [&] { forward_train(); backward_bd(); }},
      {"fwd_bwd_bdx", [&] { forward_train(); backward_bd(); backward_x(); }},
      {"merge", merge},
      // q, k, v: three layers reading one X as a sibling group (X A^T once, one-pass backward),
      // with three gradients of Y as PEFT's block gets.
      {"sibling",
       [&] {
         const auto group = vera::siblings(vera::sibling(w0, bias, ad), vera::sibling(w0, bias, k_ad),
                                           vera::sibling(w0, bias, v_ad));
         vera::forward(x, group).train(s_ctx).using_workspace(ws).eval_to(y, yk, yv);
         vera::backward(group, s_ctx, g, gk, gv).using_workspace(ws).eval_to(dx, grads, k_grads, v_grads);
       }},
      // The base GEMMs of fwd_bwd_bdx alone, on the same provider: X W0^T and G W0.
      {"floor",
       [&] {
         vera::gemm(floor_y, x, w0.transpose(), false);
         vera::gemm(floor_dx, g, w0, false);
       }},
      {"floor_full",
       [&] {
         vera::gemm(floor_y, x, w0.transpose(), false);
         vera::gemm(full_p, x, a_s.transpose(), false);
         vera::gemm(floor_y, p_s, bbd_s.transpose(), true);
         vera::gemm(full_m, g.transpose(), p_s, false);
         vera::gemm(floor_dx, g, w0, false);
         vera::gemm(full_t, g, bbd_s, false);
         vera::gemm(floor_dx, t_s, a_s, true);
       }},
  };
  for (const auto& [op, step] : steps) {
    const double ms = median_ms(step, o.repeats);
    std::printf("{\"side\": \"%s\", \"shape\": \"%s\", \"n\": %ld, \"in\": %ld, \"out\": %ld, \"r\": %ld, "
                "\"dtype\": \"%s\", \"threads\": %d, \"op\": \"%s\", \"ms\": %.4f}\n",
                side.c_str(), shape.c_str(), static_cast<long>(n), static_cast<long>(in), static_cast<long>(out),
                static_cast<long>(r), o.dtype.c_str(), o.threads, op, ms);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const options o = parse(argc, argv);
  omp_set_num_threads(o.threads);
  Eigen::setNbThreads(o.threads);
  try {
    const vera::io::safetensors_file file(o.fixture);
    return o.dtype == "float32" ? run<float>(o, file) : run<Eigen::bfloat16>(o, file);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "vs_peft: %s\n", e.what());
    return 1;
  }
}
