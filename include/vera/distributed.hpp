// SPDX-License-Identifier: Apache-2.0
// Opt-in umbrella for data-parallel training over MPI (needs an MPI implementation). Includes only.
#pragma once

#include "vera/vera.hpp"

#include "vera/distributed/bucket.hpp"
#include "vera/distributed/fingerprint.hpp"
#include "vera/distributed/mpi.hpp"
