// SPDX-License-Identifier: Apache-2.0
// Opt-in umbrella for many adapters per layer: adapter sets and mixed-adapter batches. Includes only.
#pragma once

#include "vera/vera.hpp"

#include "vera/multi/adapter_set.hpp"
#include "vera/multi/backward.hpp"
#include "vera/multi/context.hpp"
#include "vera/multi/forward.hpp"
#include "vera/multi/gradients.hpp"
#include "vera/multi/resolve.hpp"
#include "vera/multi/row_assignment.hpp"
#include "vera/multi/workspace.hpp"
