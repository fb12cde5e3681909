// SPDX-License-Identifier: Apache-2.0
// Opt-in xtensor front-end umbrella (needs xtensor): vera's operations on xtensor operands. Includes only.
#pragma once

#include "vera/vera.hpp"

#include "vera/xtensor/backward.hpp"
#include "vera/xtensor/forward.hpp"
#include "vera/xtensor/gradients.hpp"
#include "vera/xtensor/merge.hpp"
#include "vera/xtensor/operands.hpp"
#include "vera/xtensor/result.hpp"
#include "vera/xtensor/storage.hpp"
#include "vera/xtensor/views.hpp"

/// \namespace vera::xt
/// \brief xtensor front-end: the Eigen front-end's operations on xtensor operands, evaluated by
///        the same CPU evaluators (row-major 2-D operands are read in place).
