// SPDX-License-Identifier: Apache-2.0
// A CPU emulation of the CUDA execution model, so that the backend's device checks also run on
// machines without a GPU. Include it first in a translation unit compiled by the host compiler
// with VERA_CUDA_HOST_EMULATION defined; runtime.cpp provides the runtime and cuBLAS calls.
//
// A launch runs its blocks one after another. The threads of a block are cooperative contexts
// (ucontext) on the calling thread: each runs until it reaches __syncthreads() or returns, and a
// barrier opens once every thread of the block has reached it, so the block-level reductions run
// as on a GPU, deterministically and without OS threads. A __shared__ array is one array per
// kernel, which the running block's threads share. A GPU promises no order between blocks, nor
// between the threads of a block up to a barrier: every other launch runs its blocks last to
// first, and alternate phases (and blocks) run their threads last to first, so that a kernel
// whose result depends on such an order gives different results from run to run here.
#pragma once

#include <ucontext.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

namespace vera_emulation {

/// Where the running emulated thread is (threadIdx, blockIdx, blockDim, gridDim).
struct position {
  uint3 thread{0, 0, 0};
  uint3 block{0, 0, 0};
  dim3 block_dim{1, 1, 1};
  dim3 grid_dim{1, 1, 1};
};
inline position here;

/// Runs the threads of one block as contexts, switching at __syncthreads().
class block_runner {
 public:
  static constexpr std::size_t stack_bytes = 256 * 1024;

  /// Runs `body` as block `block` of `grid` blocks with `threads` threads.
  void run(unsigned block, unsigned grid, unsigned threads, const std::function<void()>& body) {
    if (stacks_.size() < threads) stacks_.resize(threads, std::vector<char>(stack_bytes));
    contexts_.resize(threads);
    state_.assign(threads, running);
    body_ = &body;
    for (unsigned t = 0; t < threads; ++t) {
      getcontext(&contexts_[t]);
      contexts_[t].uc_stack.ss_sp = stacks_[t].data();
      contexts_[t].uc_stack.ss_size = stack_bytes;
      contexts_[t].uc_link = &scheduler_;
      makecontext(&contexts_[t], &block_runner::entry, 0);
    }
    active() = this;
    for (unsigned phase = 0;; ++phase) {
      // One phase: every thread runs to its next barrier or to its end.
      for (unsigned i = 0; i < threads; ++i) {
        const unsigned t = (phase + block) % 2 == 0 ? i : threads - 1 - i;
        if (state_[t] == finished) continue;
        state_[t] = running;
        current_ = t;
        here.thread = uint3{t, 0, 0};
        here.block = uint3{block, 0, 0};
        here.block_dim = dim3(threads);
        here.grid_dim = dim3(grid);
        swapcontext(&scheduler_, &contexts_[t]);
      }
      unsigned done = 0;
      for (const int s : state_) done += s == finished ? 1u : 0u;
      if (done == threads) break;
      if (done != 0) {
        std::fprintf(stderr, "emulation: __syncthreads() not reached by every thread of block %u\n", block);
        std::abort();
      }
    }
    active() = nullptr;
  }

  /// __syncthreads(): the running thread waits for the rest of its block.
  void barrier() {
    const unsigned t = current_;
    state_[t] = waiting;
    swapcontext(&contexts_[t], &scheduler_);
  }

  static block_runner*& active() {
    static block_runner* runner = nullptr;
    return runner;
  }

 private:
  enum : int { running, waiting, finished };

  static void entry() {
    block_runner* self = active();
    (*self->body_)();
    self->state_[self->current_] = finished;  // then uc_link returns to the scheduler
  }

  ucontext_t scheduler_{};
  std::vector<ucontext_t> contexts_;
  std::vector<std::vector<char>> stacks_;
  std::vector<int> state_;
  unsigned current_ = 0;
  const std::function<void()>* body_ = nullptr;
};

/// Launches run by this emulation.
inline long long& launches() {
  static long long count = 0;
  return count;
}

/// The launch the backend makes under VERA_CUDA_HOST_EMULATION: every block of the grid, in order.
inline void run_grid(unsigned grid, unsigned block_threads, const std::function<void()>& body) {
  if (grid == 0 || block_threads == 0 || block_threads > 1024) {
    std::fprintf(stderr, "emulation: invalid launch, grid %u, block %u\n", grid, block_threads);
    std::abort();
  }
  static block_runner runner;
  const bool backwards = ++launches() % 2 == 0;
  for (unsigned i = 0; i < grid; ++i) runner.run(backwards ? grid - 1 - i : i, grid, block_threads, body);
}

inline void syncthreads() { block_runner::active()->barrier(); }

}  // namespace vera_emulation

// The device built-ins the kernels use, on the host.
#define threadIdx (::vera_emulation::here.thread)
#define blockIdx (::vera_emulation::here.block)
#define blockDim (::vera_emulation::here.block_dim)
#define gridDim (::vera_emulation::here.grid_dim)
#define __syncthreads() ::vera_emulation::syncthreads()
#undef __shared__
#define __shared__ static
#undef __launch_bounds__
#define __launch_bounds__(...)
using std::isfinite;
