// SPDX-License-Identifier: Apache-2.0
// The CUDA quickstart (examples/cuda/cuda_quickstart.cu) built by the host compiler and run on the
// CPU emulation (emulate.hpp, runtime.cpp): training must converge and the merge must match.
#include "emulate.hpp"

#include "../../../examples/cuda/cuda_quickstart.cu"
