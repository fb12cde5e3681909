// SPDX-License-Identifier: Apache-2.0
// Opt-in xtensor front-end umbrella (needs xtensor): vera's operations on xtensor operands. Includes only.
#pragma once

#include "vera/vera.hpp"

#include "vera/xtensor/backward.hpp"
#include "vera/xtensor/forward.hpp"
#include "vera/xtensor/merge.hpp"
#include "vera/xtensor/result.hpp"
#include "vera/xtensor/storage.hpp"
#include "vera/xtensor/views.hpp"
