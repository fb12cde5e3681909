# SPDX-License-Identifier: Apache-2.0
# Checks that a document shows a program's source verbatim, so the text readers copy is what CI builds.
# Run as: cmake -DDOC=<markdown file> -DPROGRAM=<source file> -P doc_example_test.cmake
foreach(variable DOC PROGRAM)
  if(NOT DEFINED ${variable})
    message(FATAL_ERROR "doc_example_test.cmake: -D${variable}=... is required")
  endif()
endforeach()
file(READ "${DOC}" doc)
file(READ "${PROGRAM}" program)
string(FIND "${doc}" "${program}" at)
if(at EQUAL -1)
  message(FATAL_ERROR "${DOC} does not show ${PROGRAM} verbatim: copy the file into its code block")
endif()
