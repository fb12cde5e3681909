// SPDX-License-Identifier: Apache-2.0
// Opt-in umbrella for data-parallel training over MPI (needs an MPI implementation). Includes only.
#pragma once

#include "vera/vera.hpp"

#include "vera/distributed/bucket.hpp"
#include "vera/distributed/fingerprint.hpp"
#include "vera/distributed/mpi.hpp"

/// \namespace vera::distributed
/// \brief Data-parallel training: gradient buckets all-reduced over MPI (or NCCL with
///        <vera/distributed/nccl.hpp>), and fingerprints that check every rank holds the same
///        adapters.
