# SPDX-License-Identifier: Apache-2.0
# Finds oneDNN's header and library and defines the imported target vera::dnnl (silent when absent).
if(NOT TARGET vera::dnnl)
  find_path(VERA_DNNL_INCLUDE_DIR dnnl.hpp)
  find_library(VERA_DNNL_LIBRARY NAMES dnnl)
  if(VERA_DNNL_INCLUDE_DIR AND VERA_DNNL_LIBRARY)
    add_library(vera::dnnl UNKNOWN IMPORTED)
    set_target_properties(vera::dnnl PROPERTIES
      IMPORTED_LOCATION "${VERA_DNNL_LIBRARY}"
      INTERFACE_INCLUDE_DIRECTORIES "${VERA_DNNL_INCLUDE_DIR}")
  endif()
endif()
