// SPDX-License-Identifier: Apache-2.0
// Umbrella header: the core library and its Eigen front-end. Includes only.
#pragma once

#include "vera/config.hpp"

#include "vera/core/dropout.hpp"
#include "vera/core/error.hpp"
#include "vera/core/exec.hpp"
#include "vera/core/peft_uniform.hpp"
#include "vera/core/philox.hpp"
#include "vera/core/projection_spec.hpp"
#include "vera/core/shape.hpp"

#include "vera/adapter/adapter.hpp"
#include "vera/adapter/context.hpp"
#include "vera/adapter/gradients.hpp"
#include "vera/adapter/options.hpp"
#include "vera/adapter/projection.hpp"
#include "vera/adapter/workspace.hpp"

#include "vera/expr/adapter_term.hpp"
#include "vera/expr/backward.hpp"
#include "vera/expr/cost.hpp"
#include "vera/expr/forward.hpp"
#include "vera/expr/merge.hpp"

// The expressions name no backend; the CPU evaluators are brought in here.
#include "vera/backend/cpu/adapter_term.hpp"
#include "vera/backend/cpu/backward.hpp"
#include "vera/backend/cpu/forward.hpp"
#include "vera/backend/cpu/merge.hpp"

#include "vera/layer/linear.hpp"
#include "vera/optim.hpp"

// Linking vera::precompiled defines VERA_PRECOMPILED: the common float and double instantiations
// then come from its library instead of being compiled in every translation unit.
#ifdef VERA_PRECOMPILED
#include "vera/precompiled.hpp"
#endif

/// \namespace vera
/// \brief VeRA adapters over Eigen: projection, adapter, lazy forward/backward/merge expressions,
///        errors, and (through the opt-in headers) optimizers, multi-adapter batches, I/O,
///        xtensor, CUDA and distributed training.

/// \namespace vera::exec
/// \brief Execution policies: empty tags passed as the first argument to pick a backend.
