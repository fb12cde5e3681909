// SPDX-License-Identifier: Apache-2.0
// libFuzzer target: arbitrary bytes through the safetensors parser, then through every accessor.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include <vera/io/safetensors.hpp>

#include "fuzz_targets.hpp"

int vera_fuzz::safetensors_one_input(const std::uint8_t* data, std::size_t size) {
  try {
    const vera::io::safetensors_view view(data, size, "fuzz");
    for (const auto& t : view.tensors()) {
      // Touch every byte the view claims, so an out-of-range claim is caught by the sanitizer.
      volatile std::uint8_t sink = 0;
      const unsigned char* bytes = view.bytes(t);
      for (std::uint64_t i = 0; i < t.byte_size(); ++i)
        sink = static_cast<std::uint8_t>(sink ^ bytes[i]);
      if (vera::io::detail::is_convertible(t.type) && t.elements() <= (std::uint64_t{1} << 20)) {
        (void)view.values<float>(t);
        (void)view.values<double>(t);
      }
      (void)view.find(t.name);
    }
    // What was read must write back and parse to the same table.
    if (view.tensors().size() <= 64) {
      vera::io::safetensors_writer writer;
      for (const auto& [key, value] : view.metadata()) writer.set_metadata(key, value);
      for (const auto& t : view.tensors()) writer.add_bytes(t.name, t.type, t.shape, view.bytes(t));
      const auto image = writer.serialize();
      const vera::io::safetensors_view again(image.data(), image.size(), "rewritten");
      if (again.tensors().size() != view.tensors().size() || again.metadata() != view.metadata())
        std::abort();  // libFuzzer reports it as a crash
    }
  } catch (const vera::error&) {
    // format_error for bad input; value_error when a valid name is not valid UTF-8 on rewrite.
  }
  return 0;
}

// Defined only in the libFuzzer build (tests/fuzz/CMakeLists.txt), so that both targets can also be
// linked into one ordinary test executable.
#if VERA_FUZZ_ENTRY
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  return vera_fuzz::safetensors_one_input(data, size);
}
#endif
