// SPDX-License-Identifier: Apache-2.0
// Fashion-MNIST as float matrices: loading, the class split into source and target tasks, batches.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <numeric>
#include <random>
#include <utility>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "idx.hpp"

namespace fashion {

/// Row-major so that a batch of images is a block of contiguous rows.
using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

inline constexpr int image_side = 28;
inline constexpr int pixels = image_side * image_side;

inline const char* const class_names[10] = {"T-shirt/top", "Trouser", "Pullover", "Dress",
                                            "Coat",        "Sandal",  "Shirt",    "Sneaker",
                                            "Bag",         "Ankle boot"};

/// \brief Images as rows (n x 784) and their labels.
struct labelled {
  matrix images;
  std::vector<int> labels;
  Eigen::Index size() const { return images.rows(); }
};

struct dataset {
  labelled train;
  labelled test;
};

/// \brief The four standard file names, found as NAME.gz or NAME under `dir`.
inline std::string find_file(const std::filesystem::path& dir, const std::string& name) {
  for (const std::string& candidate : {name + ".gz", name}) {
    if (std::filesystem::exists(dir / candidate)) return (dir / candidate).string();
  }
  throw idx_error((dir / name).string() + "[.gz]: not found");
}

inline labelled read_pair(const std::filesystem::path& dir, const std::string& prefix) {
  const std::string images_path = find_file(dir, prefix + "-images-idx3-ubyte");
  const std::string labels_path = find_file(dir, prefix + "-labels-idx1-ubyte");
  const idx_array images = read_idx(images_path);
  const idx_array labels = read_idx(labels_path);
  if (images.dims.size() != 3 || images.dims[1] != image_side || images.dims[2] != image_side) {
    throw idx_error(images_path + ": expected n x 28 x 28 images");
  }
  if (labels.dims.size() != 1 || labels.dims[0] != images.dims[0]) {
    throw idx_error(labels_path + ": expected one label per image (" +
                    std::to_string(images.dims[0]) + ")");
  }
  labelled out;
  const auto n = static_cast<Eigen::Index>(images.dims[0]);
  out.images.resize(n, pixels);
  for (Eigen::Index i = 0; i < out.images.size(); ++i) {
    out.images.data()[i] = static_cast<float>(images.data[static_cast<std::size_t>(i)]) / 255.0f;
  }
  out.labels.resize(labels.data.size());
  for (std::size_t i = 0; i < labels.data.size(); ++i) {
    if (labels.data[i] > 9) {
      throw idx_error(labels_path + ": label " + std::to_string(labels.data[i]) + " at " +
                      std::to_string(i) + " is not a class 0..9");
    }
    out.labels[i] = labels.data[i];
  }
  return out;
}

/// \brief Loads train and test sets from `dir` and standardises pixels with the training set's
///        mean and standard deviation. Throws idx_error naming the file at fault.
inline dataset load_fashion_mnist(const std::filesystem::path& dir) {
  dataset d{read_pair(dir, "train"), read_pair(dir, "t10k")};
  const double mean = d.train.images.cast<double>().mean();
  const double var = (d.train.images.cast<double>().array() - mean).square().mean();
  const float m = static_cast<float>(mean);
  const float inv_std = static_cast<float>(1.0 / std::sqrt(var));
  for (labelled* s : {&d.train, &d.test}) s->images = (s->images.array() - m) * inv_std;
  return d;
}

/// \brief The examples whose label is in `classes`, relabelled to their position there, in file
///        order, at most `limit` of them (0: all).
inline labelled select_classes(const labelled& all, const std::vector<int>& classes,
                               std::size_t limit = 0) {
  std::vector<Eigen::Index> rows;
  std::vector<int> labels;
  for (Eigen::Index i = 0; i < all.size(); ++i) {
    const auto it = std::find(classes.begin(), classes.end(), all.labels[static_cast<std::size_t>(i)]);
    if (it == classes.end()) continue;
    rows.push_back(i);
    labels.push_back(static_cast<int>(it - classes.begin()));
    if (limit != 0 && rows.size() == limit) break;
  }
  labelled out;
  out.images.resize(static_cast<Eigen::Index>(rows.size()), pixels);
  for (std::size_t k = 0; k < rows.size(); ++k) {
    out.images.row(static_cast<Eigen::Index>(k)) = all.images.row(rows[k]);
  }
  out.labels = std::move(labels);
  return out;
}

/// \brief Shuffled mini-batches of a fixed size (the last partial batch of an epoch is dropped so
///        that every training step has the same shape and reuses the same buffers).
class batcher {
 public:
  batcher(const labelled& data, Eigen::Index batch, std::uint64_t seed)
      : data_(&data), batch_(batch), order_(static_cast<std::size_t>(data.size())), rng_(seed) {
    std::iota(order_.begin(), order_.end(), Eigen::Index{0});
  }
  Eigen::Index batches_per_epoch() const { return data_->size() / batch_; }
  /// Fisher-Yates with a plain modulo draw: the same order on every standard library, unlike
  /// std::shuffle, whose use of the generator is unspecified.
  void shuffle() {
    for (std::size_t i = order_.size(); i > 1; --i) {
      const std::size_t j = static_cast<std::size_t>(rng_() % i);
      std::swap(order_[i - 1], order_[j]);
    }
  }
  /// \brief Copies batch `k` of the current order into x (batch x 784) and y.
  void gather(Eigen::Index k, matrix& x, std::vector<int>& y) const { gather(k, 0, batch_, x, y); }
  /// \brief Copies rows [first, first + count) of batch `k` (a data-parallel rank's share).
  void gather(Eigen::Index k, Eigen::Index first, Eigen::Index count, matrix& x,
              std::vector<int>& y) const {
    x.resize(count, pixels);
    y.resize(static_cast<std::size_t>(count));
    for (Eigen::Index i = 0; i < count; ++i) {
      const Eigen::Index row = order_[static_cast<std::size_t>(k * batch_ + first + i)];
      x.row(i) = data_->images.row(row);
      y[static_cast<std::size_t>(i)] = data_->labels[static_cast<std::size_t>(row)];
    }
  }

 private:
  const labelled* data_;
  Eigen::Index batch_;
  std::vector<Eigen::Index> order_;
  std::mt19937_64 rng_;
};

}  // namespace fashion
