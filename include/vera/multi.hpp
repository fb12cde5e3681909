// SPDX-License-Identifier: Apache-2.0
// Opt-in umbrella for many adapters per layer (adapter sets, mixed-adapter batches) and for sibling
// layers that read one input (q/k/v). Includes only.
#pragma once

#include "vera/vera.hpp"

#include "vera/multi/adapter_set.hpp"
#include "vera/multi/backward.hpp"
#include "vera/multi/context.hpp"
#include "vera/multi/forward.hpp"
#include "vera/multi/gradients.hpp"
#include "vera/multi/resolve.hpp"
#include "vera/multi/row_assignment.hpp"
#include "vera/multi/sibling_backward.hpp"
#include "vera/multi/sibling_context.hpp"
#include "vera/multi/sibling_forward.hpp"
#include "vera/multi/sibling_group.hpp"
#include "vera/multi/workspace.hpp"

// The CPU evaluators of the expressions above.
#include "vera/backend/cpu/mixed_backward.hpp"
#include "vera/backend/cpu/mixed_forward.hpp"
#include "vera/backend/cpu/sibling_backward.hpp"
#include "vera/backend/cpu/sibling_forward.hpp"
