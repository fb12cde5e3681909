// SPDX-License-Identifier: Apache-2.0
// vera::precompiled: the instantiations <vera/precompiled.hpp> declares, compiled once.
#include <vera/vera.hpp>

#ifndef VERA_PRECOMPILED
#error "src/precompiled.cpp is built by the vera::precompiled target, which defines VERA_PRECOMPILED"
#endif

VERA_PRECOMPILED_INSTANTIATIONS(, float)
VERA_PRECOMPILED_INSTANTIATIONS(, double)
