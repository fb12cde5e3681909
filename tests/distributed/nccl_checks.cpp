// SPDX-License-Identifier: Apache-2.0
// The NCCL gradient mean on real GPUs (one per rank); exits 77 (skipped) where no GPU is present.
#include <cstdio>
#include <vector>

#include <vera/distributed/nccl.hpp>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  int devices = 0;
  int local_skip = cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0 ? 1 : 0;
  int skip = 0;
  MPI_Allreduce(&local_skip, &skip, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (skip != 0) {
    if (rank == 0) std::printf("nccl_checks: SKIPPED: no CUDA device on at least one rank\n");
    MPI_Finalize();
    return 77;
  }
  int status = 0;
  try {
    vera::distributed::detail::check_cuda(cudaSetDevice(rank % devices), "cudaSetDevice");
    vera::distributed::nccl_communicator comm;
    const std::size_t n = 1000;
    std::vector<float> host(n);
    for (std::size_t i = 0; i < n; ++i) host[i] = static_cast<float>((rank + 1) * (i % 17));
    float* device = nullptr;
    cudaStream_t stream = nullptr;
    vera::distributed::detail::check_cuda(cudaMalloc(&device, n * sizeof(float)), "cudaMalloc");
    vera::distributed::detail::check_cuda(cudaStreamCreate(&stream), "cudaStreamCreate");
    cudaMemcpy(device, host.data(), n * sizeof(float), cudaMemcpyHostToDevice);
    vera::distributed::allreduce_mean(device, n, comm, stream);
    cudaStreamSynchronize(stream);
    cudaMemcpy(host.data(), device, n * sizeof(float), cudaMemcpyDeviceToHost);
    const float factor = (ranks + 1) / 2.0f;
    for (std::size_t i = 0; i < n; ++i) {
      if (host[i] != factor * static_cast<float>(i % 17)) {
        std::fprintf(stderr, "rank %d: element %zu is %g, expected %g\n", rank, i,
                     static_cast<double>(host[i]), static_cast<double>(factor * (i % 17)));
        status = 1;
        break;
      }
    }
    cudaStreamDestroy(stream);
    cudaFree(device);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rank %d: %s\n", rank, e.what());
    status = 1;
  }
  int total = 0;
  MPI_Allreduce(&status, &total, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0) std::printf("nccl_checks: %d ranks, %s\n", ranks, total == 0 ? "passed" : "FAILED");
  MPI_Finalize();
  return total;
}
