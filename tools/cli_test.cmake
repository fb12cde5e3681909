# SPDX-License-Identifier: Apache-2.0
# End-to-end test of the `vera` tool: exit statuses, messages, and files written or not written.
# Run as: cmake -DVERA=<path to vera> -DFIXTURES=<tests/fixtures/peft> -DWORK=<scratch dir> -P cli_test.cmake
foreach(variable VERA FIXTURES WORK)
  if(NOT DEFINED ${variable})
    message(FATAL_ERROR "cli_test.cmake: -D${variable}=... is required")
  endif()
endforeach()

file(REMOVE_RECURSE "${WORK}")
file(MAKE_DIRECTORY "${WORK}")

# expect(<exit status> <text expected in stdout+stderr or ""> <arguments...>)
function(expect status text)
  execute_process(COMMAND "${VERA}" ${ARGN} RESULT_VARIABLE result OUTPUT_VARIABLE out ERROR_VARIABLE err)
  set(all "${out}${err}")
  if(NOT result STREQUAL "${status}")
    message(SEND_ERROR "vera ${ARGN}: exit status ${result}, expected ${status}\n${all}")
  elseif(NOT text STREQUAL "")
    string(FIND "${all}" "${text}" at)
    if(at EQUAL -1)
      message(SEND_ERROR "vera ${ARGN}: output lacks '${text}'\n${all}")
    endif()
  endif()
endfunction()

set(linear_model "${FIXTURES}/linear_model.safetensors")

# Usage errors: exit 2, with a pointer to --help.
expect(2 "usage: vera <command>")
expect(2 "unknown command 'frob'" frob)
expect(2 "inspect takes one PATH" inspect)
expect(2 "unknown option '--frob'" inspect "${FIXTURES}/linear_seed" --frob 1)
expect(2 "missing required option --seed" projection --r 8 --max-in 4 --max-out 4 -o "${WORK}/p.safetensors")
expect(2 "--seed expects a non-negative integer" projection --seed x --r 8 --max-in 4 --max-out 4 -o "${WORK}/p.safetensors")
expect(2 "--generator expects" projection --seed 1 --r 8 --max-in 4 --max-out 4 --generator mt -o "${WORK}/p.safetensors")
expect(2 "needs a value" merge --base)
expect(2 "--adapter-precision expects" merge --base "${FIXTURES}/linear_model.safetensors" --adapter "${FIXTURES}/linear_seed" -o "${WORK}/m.safetensors" --adapter-precision half)
expect(2 "exactly one of --base" export-lora "${FIXTURES}/linear_seed" -o "${WORK}/lora")

# Help on every command, and the version.
expect(0 "usage: vera <command>" --help)
expect(0 "vera " --version)
foreach(command inspect projection merge export-lora)
  expect(0 "usage: vera ${command}" ${command} --help)
endforeach()

# inspect
expect(0 "layers: 3" inspect "${FIXTURES}/linear_seed")
expect(0 "identical to the regenerated matrix" inspect "${FIXTURES}/linear_projection" --base "${linear_model}")
expect(0 "160 of 160 elements differ" inspect "${FIXTURES}/linear_bf16_projection")
expect(0 "position_ids  I64 [5]" inspect "${linear_model}")
expect(1 "No such file" inspect "${WORK}/missing.safetensors")
file(WRITE "${WORK}/corrupt.safetensors" "not a safetensors file")
expect(1 "exceeds the limit" inspect "${WORK}/corrupt.safetensors")

# projection
expect(0 "wrote" projection --seed 1234 --r 8 --max-in 20 --max-out 20 -o "${WORK}/projection.safetensors")
expect(0 "vera_A  F32 [8, 20]" inspect "${WORK}/projection.safetensors")
expect(0 "A 2 x 3, B 4 x 2" projection --seed 1 --r 2 --max-in 3 --max-out 4 --generator philox -o "${WORK}/philox.safetensors")
expect(0 "metadata generator = philox" inspect "${WORK}/philox.safetensors")

# merge of two adapters of one model (PEFT's merge order); a pair PEFT would refuse writes nothing.
set(multi "${FIXTURES}/multi")
expect(0 "merged 2 adapters (4 adapted layers in all)" merge --base "${multi}/base_bf16.safetensors" --adapter "${multi}/first" --adapter "${multi}/second" -o "${WORK}/multi.safetensors")
expect(1 "first_seed/adapter_config.json': field 'save_projection' is false but true in the first adapter's" merge --base "${multi}/base.safetensors" --adapter "${multi}/first" --adapter "${multi}/first_seed" -o "${WORK}/bad_multi.safetensors")
if(EXISTS "${WORK}/bad_multi.safetensors")
  message(SEND_ERROR "a refused multi-adapter merge left bad_multi.safetensors behind")
endif()
expect(2 "several --adapter options need a single model file" merge --base "${WORK}/model.safetensors.index.json" --adapter "${multi}/first" --adapter "${multi}/second" -o "${WORK}/multi_dir")

# merge: success, and a failure that leaves no output and no temporary file behind
expect(0 "merged 3 layers" merge --base "${linear_model}" --adapter "${FIXTURES}/linear_seed" -o "${WORK}/merged.safetensors")
expect(0 "model.layers.0.q_proj.weight  F32 [12, 16]" inspect "${WORK}/merged.safetensors")
expect(1 "no tensor 'transformer.h.0.attn.c_attn.weight'" merge --base "${linear_model}" --adapter "${FIXTURES}/conv1d_seed" -o "${WORK}/bad.safetensors")

# export-lora, from a base model or a shapes file
expect(0 "3 layers, r 8" export-lora "${FIXTURES}/linear_seed" -o "${WORK}/lora" --base "${linear_model}")
file(READ "${WORK}/lora/adapter_config.json" lora_config)
string(FIND "${lora_config}" "\"peft_type\": \"LORA\"" at)
if(at EQUAL -1)
  message(SEND_ERROR "export-lora: adapter_config.json is not a LoRA config:\n${lora_config}")
endif()
file(WRITE "${WORK}/shapes.json" "{\"transformer.h.0.attn.c_attn\": [12, 20], \"transformer.h.0.attn.c_proj\": [20, 12]}")
expect(0 "2 layers, r 8" export-lora "${FIXTURES}/conv1d_seed" -o "${WORK}/lora_conv" --shapes "${WORK}/shapes.json" --dtype BF16)
file(WRITE "${WORK}/bad_shapes.json" "{\"transformer.h.0.attn.c_attn\": [12]}")
expect(1 "must map to [in, out]" export-lora "${FIXTURES}/conv1d_seed" -o "${WORK}/lora_bad" --shapes "${WORK}/bad_shapes.json")

# Sequence-classification adapters: the classifier (modules_to_save) and trained biases are listed,
# merged in place of the base model's tensors, and copied into a LoRA export.
set(seq_cls "${FIXTURES}/seq_cls_bias_vera_only")
expect(0 "modules_to_save: classifier.weight  F32 [3, 16]  -> replaces classifier.weight in a merge" inspect "${seq_cls}/adapter")
expect(0 "bias: bert.encoder.layer.0.attention.self.query.base_layer.bias  F32 [16]  -> replaces bert.encoder.layer.0.attention.self.query.bias" inspect "${seq_cls}/adapter" --base "${seq_cls}/base.safetensors")
expect(0 "modules_to_save wrapper copy: classifier.original_module.bias" inspect "${FIXTURES}/seq_cls_bias_all/adapter")
expect(0 "merged 2 layers, replaced 4 tensors" merge --base "${seq_cls}/base.safetensors" --adapter "${seq_cls}/adapter" -o "${WORK}/seq_cls_merged.safetensors")
expect(0 "and 4 modules_to_save / bias tensors copied" export-lora "${seq_cls}/adapter" -o "${WORK}/seq_cls_lora" --base "${seq_cls}/base.safetensors")
file(READ "${WORK}/seq_cls_lora/adapter_config.json" seq_cls_lora_config)
string(FIND "${seq_cls_lora_config}" "\"bias\": \"lora_only\"" at)
if(at EQUAL -1)
  message(SEND_ERROR "export-lora: bias vera_only did not become lora_only:\n${seq_cls_lora_config}")
endif()
# Refusals name the file and what is missing, and write nothing.
expect(1 "no tensor 'bert.encoder.layer.0.attention.self.query.weight' for adapted layer 'bert.encoder.layer.0.attention.self.query' (and 1 more adapted layers without a weight" merge --base "${linear_model}" --adapter "${seq_cls}/adapter" -o "${WORK}/bad_seq_cls.safetensors")
file(MAKE_DIRECTORY "${WORK}/no_bias")
file(COPY "${seq_cls}/adapter/adapter_model.safetensors" DESTINATION "${WORK}/no_bias")
file(READ "${seq_cls}/adapter/adapter_config.json" seq_cls_config)
string(REPLACE "\"vera_only\"" "\"none\"" seq_cls_config "${seq_cls_config}")
file(WRITE "${WORK}/no_bias/adapter_config.json" "${seq_cls_config}")
expect(1 "no_bias/adapter_model.safetensors': tensor 'base_model.model.bert.encoder.layer.0.attention.self.query.base_layer.bias' is not part of a VeRA adapter (and 1 more)" merge --base "${seq_cls}/base.safetensors" --adapter "${WORK}/no_bias" -o "${WORK}/bad_bias.safetensors")
expect(1 "its bias = \"none\" trains no bias" export-lora "${WORK}/no_bias" -o "${WORK}/lora_bad_bias" --base "${seq_cls}/base.safetensors")

# A model mixing Conv1D and nn.Linear: a square layer's layout must be given.
set(mixed "${FIXTURES}/mixed")
expect(1 "layer 'mlp.square' (adapted in '${mixed}/adapter/adapter_model.safetensors') has a square weight" merge --base "${mixed}/base.safetensors" --adapter "${mixed}/adapter" -o "${WORK}/bad_mixed.safetensors")
expect(1 "--conv1d mlp.square or --linear mlp.square" export-lora "${mixed}/adapter" -o "${WORK}/lora_bad_mixed" --base "${mixed}/base.safetensors")
expect(1 "layer 'attn.c_attn' is given the layout out x in (nn.Linear)" merge --base "${mixed}/base.safetensors" --adapter "${mixed}/adapter" -o "${WORK}/bad_mixed.safetensors" --linear mlp.square --linear attn.c_attn)
expect(2 "layer 'mlp.square' given to both --conv1d and --linear" merge --base "${mixed}/base.safetensors" --adapter "${mixed}/adapter" -o "${WORK}/bad_mixed.safetensors" --linear mlp.square --conv1d mlp.square)
expect(0 "merged 3 layers" merge --base "${mixed}/base_bf16.safetensors" --adapter "${mixed}/adapter" -o "${WORK}/mixed_bf16.safetensors" --linear mlp.square)
expect(0 "attn.c_attn  in 12  out 20  Conv1D" inspect "${mixed}/adapter" --base "${mixed}/base.safetensors" --linear mlp.square)

file(GLOB leftovers "${WORK}/*.tmp.*" "${WORK}/bad.safetensors" "${WORK}/lora_bad" "${WORK}/bad_seq_cls.safetensors"
  "${WORK}/bad_bias.safetensors" "${WORK}/lora_bad_bias" "${WORK}/bad_mixed.safetensors" "${WORK}/lora_bad_mixed")
if(leftovers)
  message(SEND_ERROR "failed commands left files behind: ${leftovers}")
endif()
