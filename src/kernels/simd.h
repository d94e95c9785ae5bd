/* Private to src/kernels: GCC vector extensions, so one source compiles to
 * AVX-512, AVX2 or SSE registers, whichever -march gives; intrinsics only
 * where the extensions have no operator (max, min). */
#ifndef GRAFT_KERNELS_SIMD_H
#define GRAFT_KERNELS_SIMD_H

#if defined(__AVX512F__)
#define GRAFT_VL 16
#elif defined(__AVX__)
#define GRAFT_VL 8
#else
#define GRAFT_VL 4
#endif

typedef float graft_vf __attribute__((vector_size(GRAFT_VL * sizeof(float))));
typedef int graft_vi __attribute__((vector_size(GRAFT_VL * sizeof(int))));
/* Same vector, alignment 4: NHWC channel offsets are not vector-aligned. */
typedef float graft_vfu __attribute__((vector_size(GRAFT_VL * sizeof(float)), aligned(4), may_alias));

static inline graft_vf graft_vload(const float *p) { return *(const graft_vfu *)p; }
static inline void graft_vstore(float *p, graft_vf v) { *(graft_vfu *)p = v; }
/* A shuffle, not {0} + x: adding 0.0f cannot be folded away (-0 + 0 = +0), so
 * that form costs a scalar add before every broadcast. */
static inline graft_vf graft_vsplat(float x)
{
    graft_vf v = {x};
    return __builtin_shuffle(v, (graft_vi){0});
}

/* Lanes of a where mask is set (all ones), else of b. */
static inline graft_vf graft_vselect(graft_vi mask, graft_vf a, graft_vf b)
{
    return (graft_vf)(((graft_vi)a & mask) | ((graft_vi)b & ~mask));
}

#if GRAFT_VL >= 8
#include <immintrin.h>
#endif

/* x > 0 ? x : 0 lane by lane, as the scalar ReLU (NaN gives 0): max and min
 * return their second operand when one is NaN, so max(x, 0) is exactly that.
 * Vector extensions have no max; emulated, it costs a compare and a mask
 * (and relu6 a blend), a fifth of a K=16 GEMM tile's time. */
static inline graft_vf graft_vrelu(graft_vf x)
{
#if GRAFT_VL == 16
    return _mm512_max_ps(x, _mm512_setzero_ps());
#elif GRAFT_VL == 8
    return _mm256_max_ps(x, _mm256_setzero_ps());
#else
    return (graft_vf)((graft_vi)x & (x > (graft_vf){0}));
#endif
}

/* ReLU6 lane by lane, as the scalar clamp. */
static inline graft_vf graft_vrelu6(graft_vf x)
{
    graft_vf six = graft_vsplat(6.0f);
    x = graft_vrelu(x);
#if GRAFT_VL == 16
    return _mm512_min_ps(x, six);
#elif GRAFT_VL == 8
    return _mm256_min_ps(x, six);
#else
    return graft_vselect(x < six, x, six);
#endif
}

#endif
