/* Private to src/kernels: GCC vector extensions, so one source compiles to
 * AVX-512, AVX2 or SSE registers, whichever -march gives, without intrinsics. */
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
/* Same vector, alignment 4: NHWC channel offsets are not vector-aligned. */
typedef float graft_vfu __attribute__((vector_size(GRAFT_VL * sizeof(float)), aligned(4), may_alias));

static inline graft_vf graft_vload(const float *p) { return *(const graft_vfu *)p; }
static inline void graft_vstore(float *p, graft_vf v) { *(graft_vfu *)p = v; }
static inline graft_vf graft_vsplat(float x) { return (graft_vf){0} + x; }

#endif
