// SPDX-License-Identifier: Apache-2.0
// The device checks (../device_checks.cu) built by the host compiler and run on the CPU
// emulation of the CUDA execution model, runtime and cuBLAS (emulate.hpp, runtime.cpp).
#include "emulate.hpp"

#include "../device_checks.cu"
