// SPDX-License-Identifier: Apache-2.0
// libFuzzer target: arbitrary text as adapter_config.json, then a write/read round trip.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include <vera/io/config.hpp>

#include "fuzz_targets.hpp"

int vera_fuzz::config_one_input(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const auto config = vera::io::vera_config::parse(text, "fuzz");
    const auto json = config.to_json();
    const auto again = vera::io::vera_config::parse(json.dump(), "again");
    if (again.r != config.r || again.projection_prng_key != config.projection_prng_key ||
        again.target_modules != config.target_modules || again.to_json() != json) {
      std::abort();  // libFuzzer reports it as a crash
    }
  } catch (const vera::error&) {
    // format_error for bad input; value_error when a kept string is not valid UTF-8.
  }
  return 0;
}

// Defined only in the libFuzzer build (tests/fuzz/CMakeLists.txt), so that both targets can also be
// linked into one ordinary test executable.
#if VERA_FUZZ_ENTRY
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  return vera_fuzz::config_one_input(data, size);
}
#endif
