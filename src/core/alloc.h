/* Allocation through swappable hooks (graft_set_allocator), so tests can fail the
 * Nth allocation and check that GRAFT_E_NOMEM comes back with nothing leaked. */
#ifndef GRAFT_CORE_ALLOC_H
#define GRAFT_CORE_ALLOC_H

#include <stddef.h>
#include <stdint.h>

void *graft__malloc(size_t bytes);
/* Zeroed n*size bytes; NULL when the product overflows. */
void *graft__calloc(size_t n, size_t size);
void *graft__realloc(void *p, size_t bytes);
enum { GRAFT_HUGE_BYTES = 4 << 20, GRAFT_HUGE_ALIGN = 2 << 20 };
/* 64-byte aligned (AVX-512 loads), and GRAFT_HUGE_ALIGN aligned with transparent
 * huge pages asked for from GRAFT_HUGE_BYTES up; free with graft__free_aligned. */
void *graft__malloc_aligned(size_t bytes);
void graft__free_aligned(void *p);
void graft__free(void *p);
char *graft__strdup(const char *s);

/* Overflow-checked products: return 0 and leave *out untouched on overflow. */
int graft__mul_size(size_t a, size_t b, size_t *out);
int graft__mul_i64(int64_t a, int64_t b, int64_t *out);

#endif
