// SPDX-License-Identifier: Apache-2.0
// The CUDA benchmark (bench/bench_cuda.cu) built by the host compiler and run on the CPU emulation
// with --smoke: every floor GEMM and vera call it times runs once on a small shape, so a wrong
// argument fails here rather than on a GPU. Its times mean nothing.
#include "emulate.hpp"

#include "../../../bench/bench_cuda.cu"
