// SPDX-License-Identifier: Apache-2.0
// The fuzz bodies as plain functions, so that the replay test can run them without libFuzzer.
#pragma once

#include <cstddef>
#include <cstdint>

namespace vera_fuzz {

/// Parses `data` as a safetensors image, touches every tensor, rewrites and re-parses it.
int safetensors_one_input(const std::uint8_t* data, std::size_t size);

/// Parses `data` as adapter_config.json and checks that a write/read round trip is faithful.
int config_one_input(const std::uint8_t* data, std::size_t size);

}  // namespace vera_fuzz
