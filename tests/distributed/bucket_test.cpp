// SPDX-License-Identifier: Apache-2.0
// Tests of the MPI-free parts of vera/distributed: the fused gradient bucket and projection fingerprints.
#include <catch2/catch.hpp>

#include <Eigen/Core>

#include <vera/distributed/bucket.hpp>
#include <vera/distributed/fingerprint.hpp>
#include <vera/vera.hpp>

TEMPLATE_TEST_CASE("a gradient bucket packs and unpacks registered buffers in order", "[distributed]",
                   float, double) {
  using T = TestType;
  using vec = Eigen::Matrix<T, Eigen::Dynamic, 1>;
  using mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
  const vera::projection<T> shared({1, 4, 6, 5});
  vera::adapter_options frozen_d;
  frozen_d.train_d = false;
  vera::adapter<T> ad(shared, 6, 5, frozen_d);
  vera::gradients<T> g(ad);
  mat w = mat::Zero(3, 2);
  vera::distributed::gradient_bucket<T> bucket;
  bucket.add("layer", ad, g);  // lambda_b only: d is frozen
  bucket.add("w", w);
  REQUIRE(bucket.entries().size() == 2);
  CHECK(bucket.entries()[0].name == "layer.lambda_b");
  CHECK(bucket.size() == 5 + 6);
  CHECK(bucket.bytes() == 11 * sizeof(T));

  g.lambda_b = vec::LinSpaced(5, 1, 5);
  w = mat::Constant(3, 2, T(7));
  bucket.pack();
  CHECK(bucket.data()[0] == T(1));
  CHECK(bucket.data()[4] == T(5));
  CHECK(bucket.data()[5] == T(7));
  for (vera::index i = 0; i < bucket.size(); ++i) bucket.data()[i] += T(1);
  bucket.unpack(T(0.5));
  CHECK(g.lambda_b == vec::LinSpaced(5, 1, 3));
  CHECK(w == mat::Constant(3, 2, T(4)));
}

TEST_CASE("bucket registration is checked and layouts hash by name and size", "[distributed]") {
  Eigen::VectorXf a(4), b(4);
  Eigen::MatrixXf m(4, 4);
  vera::distributed::gradient_bucket<float> one, two, three;
  one.add("a", a);
  CHECK_THROWS_WITH(one.add("a", b), Catch::Contains("registered twice"));
  CHECK_THROWS_AS(one.add("", b), vera::value_error);
  auto strided = m.block(0, 0, 2, 2);
  CHECK_THROWS_WITH(one.add("s", strided), Catch::Contains("contiguous"));
  CHECK(one.size() == 4);
  two.add("a", b);
  three.add("b", a);
  CHECK(one.layout_hash() == two.layout_hash());
  CHECK(one.layout_hash() != three.layout_hash());
}

TEST_CASE("an adapter whose registration fails leaves the bucket as it was", "[distributed]") {
  const vera::projection<float> shared({1, 4, 6, 5});
  vera::adapter<float> ad(shared, 6, 5);
  vera::gradients<float> g(ad);
  Eigen::VectorXf taken(3);
  vera::distributed::gradient_bucket<float> bucket;
  bucket.add("layer.lambda_d", taken);
  const std::uint64_t before = bucket.layout_hash();
  // lambda_b's name is free and lambda_d's is taken: neither may be registered.
  CHECK_THROWS_WITH(bucket.add("layer", ad, g), Catch::Contains("'layer.lambda_d' is registered twice"));
  CHECK(bucket.entries().size() == 1);
  CHECK(bucket.size() == 3);
  CHECK(bucket.layout_hash() == before);
  // With a free name the same adapter registers both vectors.
  bucket.add("other", ad, g);
  CHECK(bucket.entries().size() == 3);
  CHECK(bucket.size() == 3 + 5 + 4);
}

TEST_CASE("projection fingerprints name the first differing field", "[distributed]") {
  using vera::distributed::describe_difference;
  using vera::distributed::fingerprint;
  const vera::projection<float> p({3, 8, 10, 12}), same({3, 8, 10, 12}), seed({4, 8, 10, 12});
  CHECK(describe_difference(fingerprint(p), fingerprint(same)).empty());
  CHECK(describe_difference(fingerprint(seed), fingerprint(p)) == "seed 4 vs 3");
  const vera::projection<float> wide({3, 8, 11, 12});
  CHECK(describe_difference(fingerprint(wide), fingerprint(p)) == "max_in 11 vs 10");
  const vera::projection<double> wider_type({3, 8, 10, 12});
  CHECK(describe_difference(fingerprint(wider_type), fingerprint(p)).rfind("scalar size", 0) == 0);
  // Same spec, other contents (torch's non-FMA rounding): caught by the content hash.
  vera::projection_spec separate{3, 8, 10, 12};
  separate.rounding = vera::peft_rounding::separate;
  auto other = fingerprint(vera::projection<float>(separate));
  other.rounding = fingerprint(p).rounding;  // pretend the spec matched
  const bool contents_equal = vera::projection<float>(separate).a() == p.a() &&
                              vera::projection<float>(separate).b() == p.b();
  if (!contents_equal) {
    CHECK(describe_difference(other, fingerprint(p)).rfind("content hash", 0) == 0);
  }
}
