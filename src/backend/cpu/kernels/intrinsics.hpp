#pragma once
// The first include of every ISA-flagged kernel file (*_avx2.cpp, *_avx512.cpp, *_amx.cpp): the x86
// intrinsics, with GCC's uninitialized-value warnings off for the rest of the file — GCC 12 raises
// them inside its own intrinsic headers (the undefined-vector idiom of _mm512_undefined_* and the
// masked forms built on it) wherever a kernel inlines them.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
