// SPDX-License-Identifier: Apache-2.0
// Optimizers for the trained vectors (and any other contiguous buffers). Includes only.
#pragma once

#include "vera/optim/adamw.hpp"
#include "vera/optim/parameters.hpp"
#include "vera/optim/sgd.hpp"

/// \namespace vera::optim
/// \brief SGD and AdamW over registered contiguous buffers (an adapter's lambda_b and lambda_d
///        with their gradients, or any other T* buffer), with checkpointable state.
