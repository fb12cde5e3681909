// SPDX-License-Identifier: Apache-2.0
// Downstream program built against an installed vera: runs the README's usage example end to end.
#include <cstdio>

#include <vera/vera.hpp>

int main() {
  const Eigen::Index n = 16, in = 24, out = 20;
  Eigen::MatrixXf X = Eigen::MatrixXf::Random(n, in);
  Eigen::MatrixXf W0 = Eigen::MatrixXf::Random(out, in);
  Eigen::VectorXf bias = Eigen::VectorXf::Random(out);
  Eigen::MatrixXf G = Eigen::MatrixXf::Random(n, out);  // stands in for dL/dY
  const float lr = 0.01f;

  // The README's example, verbatim apart from the shapes.
  vera::projection<float> shared({/*seed=*/0, /*rank=*/8, /*max_in=*/in, /*max_out=*/out});
  vera::adapter<float> ad(shared, /*in=*/in, /*out=*/out);
  vera::forward_context<float> ctx;
  Eigen::MatrixXf Y = vera::forward(X, W0, bias, ad).train(ctx);
  vera::gradients<float> g = vera::parameter_gradients(G, ad, ctx);
  Eigen::MatrixXf dX = vera::input_gradient(G, W0, ad, ctx);
  ad.lambda_b() -= lr * g.lambda_b;  ad.lambda_d() -= lr * g.lambda_d;
  const Eigen::MatrixXf base_weight = W0;
  vera::safe_merge(W0, ad);

  // The merged layer alone must reproduce the adapted layer.
  Eigen::MatrixXf merged = X * W0.transpose();
  merged.rowwise() += bias.transpose();
  const Eigen::MatrixXf adapted = vera::forward(X, base_weight, bias, ad);
  const float gap = (merged - adapted).cwiseAbs().maxCoeff();
  std::printf("vera %s consumer: Y %ldx%ld, dX %ldx%ld, |grad b| %.4f, merged vs adapted %.1e\n",
              vera::version_string, long(Y.rows()), long(Y.cols()), long(dX.rows()),
              long(dX.cols()), double(g.lambda_b.norm()), double(gap));
  return (Y.rows() == n && dX.cols() == in && g.lambda_b.norm() > 0.0f && gap < 1e-4f) ? 0 : 1;
}
