// SPDX-License-Identifier: Apache-2.0
// Tests for vera/optim: trajectories against PyTorch's SGD and AdamW, registration and step checks.
#include <catch2/catch.hpp>

#include <cmath>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <Eigen/Core>

#include <vera/optim.hpp>
#include <vera/vera.hpp>

#ifndef VERA_FIXTURE_DIR
#error "VERA_FIXTURE_DIR must name tests/fixtures"
#endif

namespace {

struct torch_case {
  std::string name;
  std::string kind;
  double lr = 0, momentum = 0, dampening = 0, weight_decay = 0;
  bool nesterov = false;
  double beta1 = 0, beta2 = 0, eps = 0;
  int steps = 0;
  std::vector<bool> decay;
  std::vector<Eigen::VectorXd> initial;
  std::vector<std::vector<Eigen::VectorXd>> grads;   // [step][param]
  std::vector<std::vector<Eigen::VectorXd>> values;  // [step][param]
};

Eigen::VectorXd read_values(std::istringstream& line, Eigen::Index n) {
  Eigen::VectorXd v(n);
  for (Eigen::Index i = 0; i < n; ++i) line >> v(i);
  return v;
}

std::vector<torch_case> load_cases() {
  std::ifstream in(std::string(VERA_FIXTURE_DIR) + "/optim/torch_optim.txt");
  REQUIRE(in.good());
  std::vector<torch_case> cases;
  std::string text;
  while (std::getline(in, text)) {
    std::istringstream line(text);
    std::string tag;
    line >> tag;
    if (tag == "case") {
      torch_case c;
      int nesterov = 0;
      line >> c.name >> c.kind >> c.lr >> c.momentum >> c.dampening >> c.weight_decay >> nesterov >>
          c.beta1 >> c.beta2 >> c.eps >> c.steps;
      c.nesterov = nesterov != 0;
      c.grads.resize(c.steps);
      c.values.resize(c.steps);
      cases.push_back(c);
    } else if (tag == "param") {
      int decay = 0;
      Eigen::Index n = 0;
      line >> decay >> n;
      cases.back().decay.push_back(decay != 0);
      cases.back().initial.push_back(read_values(line, n));
    } else if (tag == "grad" || tag == "value") {
      int step = 0;
      std::size_t k = 0;
      line >> step >> k;
      const Eigen::Index n = cases.back().initial.at(k).size();
      auto& slot = tag == "grad" ? cases.back().grads : cases.back().values;
      slot.at(step - 1).push_back(read_values(line, n));
    }
    REQUIRE_FALSE(line.fail());
  }
  REQUIRE(cases.size() >= 5);
  return cases;
}

// Runs `c` with vera's optimizer in scalar type T; returns the largest relative difference from
// PyTorch's float64 trajectory over all steps.
template <class T, class Optimizer>
double replay(const torch_case& c, Optimizer& opt) {
  using vec = Eigen::Matrix<T, Eigen::Dynamic, 1>;
  std::vector<vec> params, grads;
  for (const auto& v : c.initial) {
    params.push_back(v.cast<T>());
    grads.push_back(vec::Zero(v.size()));
  }
  for (std::size_t k = 0; k < params.size(); ++k) {
    opt.add("p" + std::to_string(k), params[k], grads[k], c.decay[k]);
  }
  double worst = 0;
  for (int s = 0; s < c.steps; ++s) {
    for (std::size_t k = 0; k < params.size(); ++k) grads[k] = c.grads[s][k].cast<T>();
    opt.step();
    for (std::size_t k = 0; k < params.size(); ++k) {
      const Eigen::VectorXd got = params[k].template cast<double>();
      const Eigen::VectorXd& want = c.values[s][k];
      for (Eigen::Index i = 0; i < want.size(); ++i) {
        worst = std::max(worst, std::abs(got(i) - want(i)) / std::max(1.0, std::abs(want(i))));
      }
    }
  }
  return worst;
}

template <class T>
double replay_case(const torch_case& c) {
  if (c.kind == "sgd") {
    vera::optim::sgd<T> opt({c.lr, c.momentum, c.dampening, c.weight_decay, c.nesterov});
    return replay<T>(c, opt);
  }
  vera::optim::adamw<T> opt({c.lr, c.beta1, c.beta2, c.eps, c.weight_decay});
  return replay<T>(c, opt);
}

}  // namespace

TEST_CASE("optimizers follow PyTorch's trajectories", "[optim]") {
  for (const auto& c : load_cases()) {
    INFO(c.name);
    // float64 against float64: only rounding order differs (torch's lerp vs our b1 m + (1-b1) g).
    CHECK(replay_case<double>(c) < 1e-13);
    // float32 against the float64 trajectory: a few float ulps per step.
    CHECK(replay_case<float>(c) < 2e-6);
  }
}

TEMPLATE_TEST_CASE("a parameter added after some steps starts its own step count", "[optim]",
                   float, double) {
  using vec = Eigen::Matrix<TestType, Eigen::Dynamic, 1>;
  vec a = vec::LinSpaced(5, -1, 1), b = vec::LinSpaced(4, 2, 3), b_alone = b;
  const vec ga = vec::Constant(5, TestType(0.3)), gb = vec::LinSpaced(4, -0.5, 0.5);
  vera::optim::adamw<TestType> both({0.01, 0.9, 0.99, 1e-8, 0.1});
  vera::optim::adamw<TestType> alone({0.01, 0.9, 0.99, 1e-8, 0.1});
  both.add("a", a, ga);
  both.step();
  both.step();
  both.add("b", b, gb);
  alone.add("b", b_alone, gb);
  for (int s = 0; s < 3; ++s) {
    both.step();
    alone.step();
  }
  CHECK(b == b_alone);
}

TEMPLATE_TEST_CASE("SGD momentum buffers start per parameter", "[optim]", float, double) {
  using vec = Eigen::Matrix<TestType, Eigen::Dynamic, 1>;
  vec a = vec::Ones(3), b = vec::Ones(2), b_alone = b;
  const vec g = vec::Constant(3, TestType(0.5)), gb = vec::Constant(2, TestType(-0.25));
  vera::optim::sgd<TestType> both({0.1, 0.9, 0.2, 0.0, false});
  vera::optim::sgd<TestType> alone({0.1, 0.9, 0.2, 0.0, false});
  both.add("a", a, g);
  both.step();
  both.add("b", b, gb);
  alone.add("b", b_alone, gb);
  both.step();
  alone.step();
  both.step();
  alone.step();
  CHECK(b == b_alone);
}

TEST_CASE("registration checks names, sizes and layouts", "[optim][errors]") {
  Eigen::VectorXf p = Eigen::VectorXf::Ones(4), g = Eigen::VectorXf::Zero(4), g3(3);
  vera::optim::adamw<float> opt;
  CHECK_THROWS_AS(opt.add("p", p, g3), vera::shape_error);
  CHECK_THROWS_WITH(opt.add("p", p, g3), Catch::Contains("parameter 'p' gradient") &&
                                             Catch::Contains("4") && Catch::Contains("3"));
  CHECK_THROWS_AS(opt.add("", p, g), vera::value_error);
  opt.add("p", p, g);
  CHECK_THROWS_WITH(opt.add("p", p, g), Catch::Contains("registered twice"));
  CHECK(opt.parameters().size() == 1);

  Eigen::MatrixXf m = Eigen::MatrixXf::Ones(4, 4), gm = Eigen::MatrixXf::Zero(3, 2);
  auto strided = m.block(0, 0, 3, 2);  // column stride 4 != 3 rows
  CHECK_THROWS_WITH(opt.add("block", strided, gm), Catch::Contains("contiguous"));
  auto columns = m.middleCols(1, 2);  // whole columns: contiguous
  Eigen::MatrixXf gc = Eigen::MatrixXf::Zero(4, 2);
  CHECK_NOTHROW(opt.add("columns", columns, gc));
  CHECK(opt.parameters().scalars() == 12);
}

TEST_CASE("options are validated", "[optim][errors]") {
  using vera::optim::adamw_options;
  using vera::optim::sgd_options;
  CHECK_THROWS_AS(vera::optim::adamw<float>(adamw_options{-1.0}), vera::value_error);
  CHECK_THROWS_WITH(vera::optim::adamw<float>(adamw_options{1e-3, 1.0}), Catch::Contains("beta1"));
  CHECK_THROWS_WITH(vera::optim::adamw<float>(adamw_options{1e-3, 0.9, 0.999, 0.0}),
                    Catch::Contains("eps"));
  CHECK_THROWS_AS(vera::optim::adamw<float>(adamw_options{NAN}), vera::value_error);
  CHECK_THROWS_WITH(vera::optim::sgd<float>(sgd_options{0.1, 0.0, 0.0, 0.0, true}),
                    Catch::Contains("nesterov"));
  CHECK_THROWS_WITH(vera::optim::sgd<float>(sgd_options{0.1, 0.9, 1.5}),
                    "vera::optim::sgd: dampening must be in [0, 1], got 1.5");
  // Bounds and values print as the shortest decimal that reads back exactly.
  CHECK_THROWS_WITH(vera::optim::adamw<float>(adamw_options{1e-3, 0.9, 0.999, -1e-8}),
                    "vera::optim::adamw: eps must be in (0, inf), got -1e-08");
  CHECK_THROWS_WITH(vera::optim::adamw<float>(adamw_options{-(0.1 + 0.2)}),
                    "vera::optim::adamw: lr must be in [0, inf), got -0.30000000000000004");
  CHECK_THROWS_WITH(vera::optim::adamw<float>(adamw_options{NAN}), Catch::EndsWith("got nan"));
  vera::optim::sgd<float> opt;
  CHECK_THROWS_AS(opt.set_lr(INFINITY), vera::value_error);
  opt.set_lr(0.5);
  CHECK(opt.options().lr == 0.5);
}

TEMPLATE_TEST_CASE("a non-finite gradient changes nothing", "[optim][errors]", float, double) {
  using vec = Eigen::Matrix<TestType, Eigen::Dynamic, 1>;
  vec a = vec::LinSpaced(6, -1, 1), b = vec::LinSpaced(3, 1, 2);
  vec ga = vec::Constant(6, TestType(0.1)), gb = vec::Constant(3, TestType(0.2));
  vera::optim::adamw<TestType> opt;
  opt.add("a", a, ga);
  opt.add("b", b, gb);
  opt.step();
  const vec a_before = a, b_before = b;
  gb(2) = std::numeric_limits<TestType>::quiet_NaN();
  CHECK_THROWS_WITH(opt.step(), Catch::Contains("'b' element 2") && Catch::Contains("not finite"));
  CHECK(a == a_before);
  CHECK(b == b_before);
  CHECK(opt.steps() == 1);

  // The failed step left no trace: the next good step matches an optimizer that never saw it.
  gb(2) = TestType(0.2);
  vec a2 = vec::LinSpaced(6, -1, 1), b2 = vec::LinSpaced(3, 1, 2);
  vera::optim::adamw<TestType> clean;
  clean.add("a", a2, ga);
  clean.add("b", b2, gb);
  clean.step();
  clean.step();
  opt.step();
  CHECK(a == a2);
  CHECK(b == b2);
}

TEST_CASE("adapters register their trained vectors only", "[optim][adapter]") {
  const vera::projection<double> shared({3, 8, 10, 12});
  vera::adapter_options frozen_b;
  frozen_b.train_b = false;
  vera::adapter<double> ad(shared, 10, 12, frozen_b);
  vera::gradients<double> g(ad);
  g.lambda_d.setConstant(1.0);
  g.lambda_b.setConstant(1.0);
  vera::optim::sgd<double> opt({0.5});
  opt.add("layer", ad, g);
  REQUIRE(opt.parameters().size() == 1);
  CHECK(opt.parameters().items()[0].name == "layer.lambda_d");
  const Eigen::VectorXd b_before = ad.lambda_b();
  const Eigen::VectorXd d_before = ad.lambda_d();
  opt.step();
  CHECK(ad.lambda_b() == b_before);
  CHECK((ad.lambda_d().array() - (d_before.array() - 0.5)).abs().maxCoeff() == 0.0);

  vera::gradients<double> wrong;
  wrong.lambda_b = Eigen::VectorXd::Zero(12);
  wrong.lambda_d = Eigen::VectorXd::Zero(7);
  vera::optim::sgd<double> other;
  CHECK_THROWS_WITH(other.add("x", ad, wrong), Catch::Contains("lambda_d") && Catch::Contains("7"));
  CHECK(other.parameters().empty());
}

TEST_CASE("a merged linear layer refuses optimizer steps", "[optim][adapter]") {
  const vera::projection<float> shared({1, 4, 6, 5});
  vera::adapter<float> ad(shared, 6, 5);
  vera::linear<float> layer(Eigen::MatrixXf::Ones(5, 6), std::nullopt, ad);
  vera::gradients<float> g(layer.vera_adapter());
  g.lambda_b.setConstant(0.1f);
  vera::optim::adamw<float> opt;
  opt.add("fc", layer, g);
  CHECK(opt.parameters().size() == 2);
  opt.step();
  layer.merge();
  const vera::linear<float>& view = layer;
  const Eigen::VectorXf b_before = view.vera_adapter().lambda_b();
  const Eigen::MatrixXf w_before = view.weight();
  CHECK_THROWS_AS(opt.step(), vera::state_error);
  CHECK(view.vera_adapter().lambda_b() == b_before);
  layer.unmerge();
  // unmerge() restored W0 because b and d did not move while merged.
  CHECK((view.weight() - Eigen::MatrixXf::Ones(5, 6)).cwiseAbs().maxCoeff() < 1e-6f);
  layer.merge();
  CHECK(view.weight() == w_before);
  layer.unmerge();
  CHECK_NOTHROW(opt.step());
}

namespace {

// Runs `steps` steps of an optimizer, writing with step-dependent gradients.
template <class Optimizer, class Vec>
void run_steps(Optimizer& opt, Vec& ga, Vec& gb, int first_step, int steps) {
  using T = typename Vec::Scalar;
  for (int s = first_step; s < first_step + steps; ++s) {
    ga = Vec::LinSpaced(ga.size(), T(-0.3), T(0.2 + 0.1 * s));
    gb = Vec::Constant(gb.size(), T(0.05) * T(s % 3 - 1));
    opt.step();
  }
}

template <class Optimizer, class T>
void check_resume(const Optimizer& prototype) {
  using vec = Eigen::Matrix<T, Eigen::Dynamic, 1>;
  vec a = vec::LinSpaced(5, -1, 1), b = vec::LinSpaced(3, 2, 3), ga(5), gb(3);
  Optimizer whole = prototype;
  whole.add("a", a, ga);
  whole.add("b", b, gb, /*decay=*/false);
  run_steps(whole, ga, gb, 0, 3);
  const auto saved = whole.state();

  // A fresh optimizer over copies of the parameters, registered in the other order.
  vec a2 = a, b2 = b, ga2(5), gb2(3);
  Optimizer resumed = prototype;
  resumed.add("b", b2, gb2, /*decay=*/false);
  resumed.add("a", a2, ga2);
  resumed.load_state(saved);
  CHECK(resumed.steps() == 3);
  run_steps(whole, ga, gb, 3, 4);
  run_steps(resumed, ga2, gb2, 3, 4);
  CHECK(a == a2);
  CHECK(b == b2);
}

}  // namespace

TEMPLATE_TEST_CASE("optimizer state round-trips and training resumes exactly", "[optim][state]",
                   float, double) {
  check_resume<vera::optim::adamw<TestType>, TestType>(vera::optim::adamw<TestType>({0.01, 0.9, 0.99, 1e-8, 0.1}));
  check_resume<vera::optim::sgd<TestType>, TestType>(vera::optim::sgd<TestType>({0.05, 0.9, 0.1, 0.01, false}));
  check_resume<vera::optim::sgd<TestType>, TestType>(vera::optim::sgd<TestType>({0.05}));
}

TEST_CASE("loading a mismatched optimizer state throws and changes nothing", "[optim][state][errors]") {
  Eigen::VectorXd a = Eigen::VectorXd::Ones(4), ga = Eigen::VectorXd::Constant(4, 0.5);
  vera::optim::adamw<double> opt;
  opt.add("a", a, ga);
  opt.step();
  const auto good = opt.state();
  REQUIRE(good.size() == 1);
  CHECK(good[0].steps == 1);
  CHECK(good[0].first.size() == 4);

  auto renamed = good;
  renamed[0].parameter = "other";
  CHECK_THROWS_WITH(opt.load_state(renamed), Catch::Contains("no entry for parameter 'a'"));
  auto short_buffer = good;
  short_buffer[0].second.pop_back();
  CHECK_THROWS_AS(opt.load_state(short_buffer), vera::shape_error);
  auto poisoned = good;
  poisoned[0].first[2] = NAN;
  CHECK_THROWS_WITH(opt.load_state(poisoned), Catch::Contains("non-finite"));
  CHECK_THROWS_WITH(opt.load_state({}), Catch::Contains("0 parameters"));

  // Still the state it had: the next step matches an optimizer that never saw the bad loads.
  Eigen::VectorXd a2 = Eigen::VectorXd::Ones(4);
  vera::optim::adamw<double> clean;
  clean.add("a", a2, ga);
  clean.step();
  clean.step();
  opt.step();
  CHECK(a == a2);
}
