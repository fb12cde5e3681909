// SPDX-License-Identifier: Apache-2.0
// Tests of vera/distributed under MPI (run with two or more ranks): the fused all-reduce, and the
// consistency checks that must fail on every rank together, naming the rank that differs.
#include <mpi.h>

#include <cstdio>
#include <functional>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include <vera/distributed.hpp>

namespace {

int failures = 0;
int rank = 0;
int ranks = 1;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "rank %d: FAILED: %s\n", rank, what.c_str());
    ++failures;
  }
}

// Runs `f`, which must throw consistency_error whose message contains every string in `parts`.
void expect_mismatch(const std::function<void()>& f, std::initializer_list<const char*> parts,
                     const std::string& what) {
  try {
    f();
    expect(false, what + ": no consistency_error");
  } catch (const vera::distributed::consistency_error& e) {
    const std::string message = e.what();
    for (const char* part : parts) {
      expect(message.find(part) != std::string::npos,
             what + ": message '" + message + "' lacks '" + part + "'");
    }
  }
}

void test_allreduce_mean() {
  // Rank r holds (r + 1) * (i + 1); the mean over ranks is (ranks + 1) / 2 * (i + 1), exact in
  // binary for these small integers and halves.
  const vera::projection<double> shared({7, 6, 9, 5});
  vera::adapter<double> ad(shared, 9, 5);
  vera::gradients<double> g(ad);
  Eigen::MatrixXd head(3, 4);
  vera::distributed::gradient_bucket<double> bucket;
  bucket.add("layer", ad, g);
  bucket.add("head", head);
  expect(bucket.size() == 5 + 6 + 12, "bucket size");
  for (Eigen::Index i = 0; i < g.lambda_b.size(); ++i) g.lambda_b(i) = (rank + 1.0) * (i + 1.0);
  for (Eigen::Index i = 0; i < g.lambda_d.size(); ++i) g.lambda_d(i) = -(rank + 1.0) * (i + 1.0);
  for (Eigen::Index i = 0; i < head.size(); ++i) head.data()[i] = (rank + 1.0) * (i + 1.0);
  vera::distributed::check_layout(bucket);
  vera::distributed::allreduce_mean(bucket);
  const double factor = (ranks + 1.0) / 2.0;
  bool exact = true;
  for (Eigen::Index i = 0; i < g.lambda_b.size(); ++i) exact &= g.lambda_b(i) == factor * (i + 1.0);
  for (Eigen::Index i = 0; i < g.lambda_d.size(); ++i) exact &= g.lambda_d(i) == -factor * (i + 1.0);
  for (Eigen::Index i = 0; i < head.size(); ++i) exact &= head.data()[i] == factor * (i + 1.0);
  expect(exact, "allreduce_mean gives the exact mean in every registered buffer");
  expect(vera::distributed::mean_over_ranks(rank) == (ranks - 1) / 2.0, "mean_over_ranks");
}

void test_chunked_reduction() {
  using pieces = std::vector<std::pair<vera::index, vera::index>>;
  const auto split = [](vera::index total, vera::index limit) {
    pieces out;
    vera::distributed::detail::for_each_chunk(total, limit, [&](vera::index offset, vera::index count) {
      out.emplace_back(offset, count);
    });
    return out;
  };
  expect(split(10, 4) == pieces{{0, 4}, {4, 4}, {8, 2}}, "10 elements in pieces of at most 4");
  expect(split(8, 4) == pieces{{0, 4}, {4, 4}}, "8 elements in pieces of 4");
  expect(split(3, 4) == pieces{{0, 3}}, "3 elements in one piece");
  expect(split(0, 4).empty(), "no elements, no piece");
  // A fused buffer past MPI's int count: only the pieces are computed, nothing is allocated.
  const vera::index int_max = std::numeric_limits<int>::max();
  expect(split(int_max + 6, int_max) == pieces{{0, int_max}, {int_max, 6}},
         "2^31 + 5 elements in pieces of at most INT_MAX");

  // The reduction itself, in pieces of 3: rank r holds r + i, the sum is ranks (ranks - 1) / 2 + ranks i.
  std::vector<double> values(11);
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = rank + static_cast<double>(i);
  vera::distributed::detail::allreduce_sum(values.data(), static_cast<vera::index>(values.size()),
                                           MPI_COMM_WORLD, 3);
  bool exact = true;
  for (std::size_t i = 0; i < values.size(); ++i) {
    exact &= values[i] == ranks * (ranks - 1) / 2.0 + ranks * static_cast<double>(i);
  }
  expect(exact, "a reduction in pieces of 3 sums every element");
}

void test_projection_check() {
  const vera::projection<float> same({3, 8, 10, 12});
  try {
    vera::distributed::check_projection(same);
  } catch (const std::exception& e) {
    expect(false, std::string("identical projections rejected: ") + e.what());
  }
  const vera::projection<float> seeded({rank == 1 ? 4u : 3u, 8, 10, 12});
  expect_mismatch([&] { vera::distributed::check_projection(seeded); }, {"rank 1", "seed 4 vs 3"},
                  "different seed");
  const vera::projection<float> ranked({3, rank == 1 ? 6 : 8, 10, 12});
  expect_mismatch([&] { vera::distributed::check_projection(ranked); }, {"rank 1", "rank 6 vs 8"},
                  "different rank");
  vera::projection_spec spec{3, 8, 10, 12};
  if (rank == 1) spec.kind = vera::generator::philox;
  const vera::projection<float> generated(spec);
  expect_mismatch([&] { vera::distributed::check_projection(generated); }, {"rank 1", "generator"},
                  "different generator");
}

void test_layout_and_parameter_checks() {
  Eigen::VectorXf a = Eigen::VectorXf::Zero(4), extra = Eigen::VectorXf::Zero(2);
  vera::distributed::gradient_bucket<float> bucket;
  bucket.add("a", a);
  if (rank == 1) bucket.add("extra", extra);
  expect_mismatch([&] { vera::distributed::check_layout(bucket); }, {"gradient layout", "rank 1"},
                  "different layout");

  Eigen::VectorXf p = Eigen::VectorXf::Constant(4, 0.5f), gp = Eigen::VectorXf::Zero(4);
  if (rank == 1) p(3) = std::nextafter(0.5f, 1.0f);
  vera::optim::sgd<float> opt;
  opt.add("p", p, gp);
  expect_mismatch([&] { vera::distributed::check_parameters(opt.parameters()); },
                  {"parameter values", "rank 1"}, "parameters differing in one bit");
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  if (ranks < 2) {
    if (rank == 0) std::fprintf(stderr, "mpi_checks: run with at least two ranks\n");
    MPI_Finalize();
    return 1;
  }
  try {
    test_allreduce_mean();
    test_chunked_reduction();
    test_projection_check();
    test_layout_and_parameter_checks();
  } catch (const std::exception& e) {
    expect(false, std::string("unexpected exception: ") + e.what());
  }
  int total = 0;
  MPI_Allreduce(&failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (rank == 0) std::printf("mpi_checks: %d ranks, %d failure(s)\n", ranks, total);
  MPI_Finalize();
  return total == 0 ? 0 : 1;
}
