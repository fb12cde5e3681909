// SPDX-License-Identifier: Apache-2.0
// Data-parallel gradient reduction on GPUs through NCCL, with the communicator set up over MPI.
// Host code only (no kernels): it compiles with the host compiler against the CUDA runtime and NCCL.
#pragma once

#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>

#include <cstddef>
#include <string>
#include <type_traits>

#include "vera/distributed/mpi.hpp"

namespace vera::distributed {

namespace detail {

inline void check_nccl(ncclResult_t code, const char* call) {
  if (code == ncclSuccess) return;
  throw communication_error(std::string("vera::distributed: ") + call + " failed: " +
                            ncclGetErrorString(code));
}

inline void check_cuda(cudaError_t code, const char* call) {
  if (code == cudaSuccess) return;
  throw communication_error(std::string("vera::distributed: ") + call + " failed: " +
                            cudaGetErrorString(code));
}

template <class T>
ncclDataType_t nccl_type() {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "vera::distributed: float or double gradients");
  return std::is_same_v<T, float> ? ncclFloat32 : ncclFloat64;
}

}  // namespace detail

/// \brief An NCCL communicator over the ranks of `comm`, one GPU per rank (the caller selects it
///        with cudaSetDevice first). Collective over `comm`. Destroys the communicator when it
///        goes out of scope.
class nccl_communicator {
 public:
  /// \brief Creates the communicator: rank 0 makes the NCCL id, MPI broadcasts it. Collective.
  /// \throws communication_error when an MPI or NCCL call fails.
  explicit nccl_communicator(MPI_Comm comm = MPI_COMM_WORLD) {
    int rank = 0, ranks = 1;
    detail::check_mpi(MPI_Comm_rank(comm, &rank), "MPI_Comm_rank");
    detail::check_mpi(MPI_Comm_size(comm, &ranks), "MPI_Comm_size");
    ncclUniqueId id{};
    if (rank == 0) detail::check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
    detail::check_mpi(MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, comm), "MPI_Bcast");
    detail::check_nccl(ncclCommInitRank(&comm_, ranks, id, rank), "ncclCommInitRank");
    ranks_ = ranks;
  }
  nccl_communicator(const nccl_communicator&) = delete;
  nccl_communicator& operator=(const nccl_communicator&) = delete;
  ~nccl_communicator() {
    if (comm_ != nullptr) ncclCommDestroy(comm_);
  }

  /// \brief The NCCL handle, for the caller's own collectives.
  ncclComm_t get() const noexcept { return comm_; }
  /// \brief Number of ranks in the communicator.
  int ranks() const noexcept { return ranks_; }

 private:
  ncclComm_t comm_ = nullptr;
  int ranks_ = 1;
};

/// \brief Replaces `count` device values at `device_gradients` (the caller's fused gradient
///        buffer) by their mean over the ranks, in place, enqueued on `stream`. No
///        synchronisation and no allocation: the result is ready when the stream gets there.
/// \throws communication_error when NCCL refuses to enqueue the reduction.
template <class T>
void allreduce_mean(T* device_gradients, std::size_t count, const nccl_communicator& comm,
                    cudaStream_t stream) {
  detail::check_nccl(ncclAllReduce(device_gradients, device_gradients, count, detail::nccl_type<T>(),
                                   ncclAvg, comm.get(), stream),
                     "ncclAllReduce");
}

}  // namespace vera::distributed
