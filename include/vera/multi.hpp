// SPDX-License-Identifier: Apache-2.0
// Opt-in umbrella for many adapters per layer (adapter sets, mixed-adapter batches) and for sibling
// layers that read one input (q/k/v). Includes only.
#pragma once

#include "vera/vera.hpp"

#include "vera/adapter/adapter_set.hpp"
#include "vera/adapter/mixed_context.hpp"
#include "vera/adapter/mixed_gradients.hpp"
#include "vera/adapter/mixed_workspace.hpp"
#include "vera/adapter/resolve_rows.hpp"
#include "vera/adapter/row_assignment.hpp"
#include "vera/adapter/sibling_context.hpp"
#include "vera/expr/mixed_backward.hpp"
#include "vera/expr/mixed_forward.hpp"
#include "vera/expr/set_merge.hpp"
#include "vera/expr/sibling_backward.hpp"
#include "vera/expr/sibling_forward.hpp"
#include "vera/expr/sibling_group.hpp"

// The CPU evaluators of the expressions above.
#include "vera/backend/cpu/mixed_backward.hpp"
#include "vera/backend/cpu/mixed_forward.hpp"
#include "vera/backend/cpu/sibling_backward.hpp"
#include "vera/backend/cpu/sibling_forward.hpp"
