// SPDX-License-Identifier: Apache-2.0
// Data-parallel training over MPI: one fused all-reduce of the gradients, and start-up checks that
// every rank holds the same projection, the same parameters and the same gradient layout.
#pragma once

#include <mpi.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "vera/adapter/projection.hpp"
#include "vera/core/error.hpp"
#include "vera/distributed/bucket.hpp"
#include "vera/distributed/fingerprint.hpp"
#include "vera/optim/parameters.hpp"

namespace vera::distributed {

/// \brief Ranks disagree on something that must be identical (projection, parameters, layout).
class consistency_error : public value_error {
 public:
  using value_error::value_error;
};

/// \brief An MPI call failed; the message carries MPI's own.
///
/// MPI returns failures only under the MPI_ERRORS_RETURN error handler; under its default,
/// MPI_ERRORS_ARE_FATAL, a failing call aborts the job before the library sees it. The library
/// leaves the handler of the communicator it is given alone (it is the caller's); to get this
/// exception, call `MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN)` on that communicator or on a
/// duplicate kept for training.
class communication_error : public error {
 public:
  using error::error;
};

namespace detail {

inline void check_mpi(int code, const char* call) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  throw communication_error(std::string("vera::distributed: ") + call + " failed: " +
                            std::string(text, static_cast<std::size_t>(length)));
}

template <class T>
MPI_Datatype mpi_type() {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "vera::distributed: float or double gradients");
  return std::is_same_v<T, float> ? MPI_FLOAT : MPI_DOUBLE;
}

// Calls piece(offset, count) for consecutive pieces of at most `limit` elements covering
// [0, total): MPI counts are int, so a larger buffer is reduced in several calls.
template <class F>
void for_each_chunk(index total, index limit, F&& piece) {
  for (index offset = 0; offset < total;) {
    const index count = std::min(limit, total - offset);
    piece(offset, count);
    offset += count;
  }
}

// In-place sum over the ranks of `total` values, in MPI_Allreduce calls of at most `limit`
// (<= INT_MAX) elements each.
template <class T>
void allreduce_sum(T* data, index total, MPI_Comm comm,
                   index limit = std::numeric_limits<int>::max()) {
  for_each_chunk(total, limit, [&](index offset, index count) {
    check_mpi(MPI_Allreduce(MPI_IN_PLACE, data + offset, static_cast<int>(count), mpi_type<T>(),
                            MPI_SUM, comm),
              "MPI_Allreduce");
  });
}

inline int rank_of(MPI_Comm comm) {
  int rank = 0;
  check_mpi(MPI_Comm_rank(comm, &rank), "MPI_Comm_rank");
  return rank;
}

// Gathers `count` words from every rank; returns them rank-major.
inline std::vector<std::uint64_t> all_gather(const std::uint64_t* mine, int count, MPI_Comm comm) {
  int ranks = 1;
  check_mpi(MPI_Comm_size(comm, &ranks), "MPI_Comm_size");
  std::vector<std::uint64_t> all(static_cast<std::size_t>(ranks) * static_cast<std::size_t>(count));
  check_mpi(MPI_Allgather(mine, count, MPI_UINT64_T, all.data(), count, MPI_UINT64_T, comm),
            "MPI_Allgather");
  return all;
}

inline std::uint64_t fnv1a(const void* bytes, std::size_t n,
                           std::uint64_t h = 1469598103934665603ull) {
  const auto* p = static_cast<const unsigned char*>(bytes);
  for (std::size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

// Every rank learns the same verdict, so that all of them throw together (none is left waiting
// in a later collective).
inline void require_equal_words(const std::vector<std::uint64_t>& all, int count, MPI_Comm comm,
                                const std::string& what) {
  const std::size_t ranks = all.size() / static_cast<std::size_t>(count);
  for (std::size_t r = 1; r < ranks; ++r) {
    for (int k = 0; k < count; ++k) {
      if (all[r * static_cast<std::size_t>(count) + static_cast<std::size_t>(k)] !=
          all[static_cast<std::size_t>(k)]) {
        throw consistency_error("vera::distributed: " + what + " on rank " + std::to_string(r) +
                                " differs from rank 0 (this is rank " +
                                std::to_string(rank_of(comm)) + ")");
      }
    }
  }
}

}  // namespace detail

/// \brief Collective: throws consistency_error on every rank when any rank's projection differs
///        from rank 0's (seed, generator, rounding, rank, extents, scalar type or contents),
///        naming the first such rank and field.
template <class T>
void check_projection(const projection<T>& shared, MPI_Comm comm = MPI_COMM_WORLD) {
  constexpr int fields = projection_fingerprint::fields;
  const auto mine = fingerprint(shared).words();
  const auto all = detail::all_gather(mine.data(), fields, comm);
  const auto reference = projection_fingerprint::from_words(all.data());
  const std::size_t ranks = all.size() / fields;
  for (std::size_t r = 1; r < ranks; ++r) {
    const auto other = projection_fingerprint::from_words(all.data() + r * fields);
    const std::string difference = describe_difference(other, reference);
    if (!difference.empty()) {
      throw consistency_error("vera::distributed: the projection on rank " + std::to_string(r) +
                              " differs from rank 0's: " + difference + " (rank " +
                              std::to_string(r) + " vs rank 0)");
    }
  }
}

/// \brief Collective: throws consistency_error on every rank unless all ranks registered the
///        same gradient buffers (names and sizes, in order) in their buckets.
template <class T>
void check_layout(const gradient_bucket<T>& bucket, MPI_Comm comm = MPI_COMM_WORLD) {
  const std::uint64_t mine[2] = {bucket.layout_hash(), static_cast<std::uint64_t>(bucket.size())};
  detail::require_equal_words(detail::all_gather(mine, 2, comm), 2, comm,
                              "the gradient layout (names and sizes of registered buffers)");
}

/// \brief Collective: throws consistency_error on every rank unless the registered parameters
///        (names, sizes and values, bit for bit) are the same on all ranks, as data-parallel
///        replicas must be at the start.
template <class T>
void check_parameters(const optim::parameter_list<T>& parameters, MPI_Comm comm = MPI_COMM_WORLD) {
  std::uint64_t h = detail::fnv1a(nullptr, 0);
  for (const auto& p : parameters.items()) {
    h = detail::fnv1a(p.name.data(), p.name.size(), h);
    h = detail::fnv1a(p.value, static_cast<std::size_t>(p.size) * sizeof(T), h);
  }
  detail::require_equal_words(detail::all_gather(&h, 1, comm), 1, comm, "the parameter values");
}

/// \brief Collective: replaces every registered gradient by its mean over the ranks, with one
///        in-place MPI_Allreduce over the fused buffer (one per INT_MAX elements, MPI's count
///        being an int). Allocation-free.
/// \throws communication_error when an MPI call reports failure.
template <class T>
void allreduce_mean(gradient_bucket<T>& bucket, MPI_Comm comm = MPI_COMM_WORLD) {
  int ranks = 1;
  detail::check_mpi(MPI_Comm_size(comm, &ranks), "MPI_Comm_size");
  bucket.pack();
  detail::allreduce_sum(bucket.data(), bucket.size(), comm);
  bucket.unpack(static_cast<T>(1) / static_cast<T>(ranks));
}

/// \brief Collective: the mean of `value` over the ranks (a loss for logging, for example).
/// \throws communication_error when an MPI call reports failure.
inline double mean_over_ranks(double value, MPI_Comm comm = MPI_COMM_WORLD) {
  int ranks = 1;
  detail::check_mpi(MPI_Comm_size(comm, &ranks), "MPI_Comm_size");
  double total = 0;
  detail::check_mpi(MPI_Allreduce(&value, &total, 1, MPI_DOUBLE, MPI_SUM, comm), "MPI_Allreduce");
  return total / ranks;
}

}  // namespace vera::distributed
