// SPDX-License-Identifier: Apache-2.0
// Opt-in I/O umbrella (needs nlohmann_json): safetensors, adapter configs, PEFT directories.
#pragma once

#include "vera/io/config.hpp"
#include "vera/io/dtype.hpp"
#include "vera/io/error.hpp"
#include "vera/io/file.hpp"
#include "vera/io/lora.hpp"
#include "vera/io/merged_model.hpp"
#include "vera/io/model_adapter.hpp"
#include "vera/io/peft.hpp"
#include "vera/io/safetensors.hpp"
#include "vera/io/sharded_model.hpp"

// merged_model merges through the CPU backend.
#include "vera/backend/cpu/merge.hpp"

/// \namespace vera::io
/// \brief Files: safetensors reading and writing, PEFT `adapter_config.json`, PEFT adapter
///        directories, merged and sharded models, LoRA export.
