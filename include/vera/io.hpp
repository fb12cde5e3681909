// SPDX-License-Identifier: Apache-2.0
// Opt-in I/O umbrella: safetensors, adapter_config.json and PEFT adapter directories (needs
// nlohmann_json).
#pragma once

#include "vera/io/config.hpp"
#include "vera/io/dtype.hpp"
#include "vera/io/error.hpp"
#include "vera/io/file.hpp"
#include "vera/io/model_adapter.hpp"
#include "vera/io/peft.hpp"
#include "vera/io/safetensors.hpp"
