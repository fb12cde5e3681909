# SPDX-License-Identifier: Apache-2.0
# cmake -DFIRST=prog -DSECOND=prog [-DARGS=...] -P same_output_test.cmake: runs both programs with
# ARGS and fails unless both succeed and print exactly the same thing.
separate_arguments(args UNIX_COMMAND "${ARGS}")
execute_process(COMMAND "${FIRST}" ${args} OUTPUT_VARIABLE first RESULT_VARIABLE first_rc)
execute_process(COMMAND "${SECOND}" ${args} OUTPUT_VARIABLE second RESULT_VARIABLE second_rc)
if(NOT first_rc EQUAL 0 OR NOT second_rc EQUAL 0)
  message(FATAL_ERROR "exit codes ${first_rc} (${FIRST}) and ${second_rc} (${SECOND})")
endif()
if(NOT first STREQUAL second)
  message(FATAL_ERROR "outputs differ:\n--- ${FIRST}\n${first}\n--- ${SECOND}\n${second}")
endif()
string(LENGTH "${first}" length)
message(STATUS "same output (${length} characters) from ${FIRST} and ${SECOND}")
