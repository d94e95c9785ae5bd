/* Aligned allocation: the alignment each size class promises, that the hooks see
 * every byte of it (a failing allocator gets NULL back, freeing returns the hook's
 * own pointer), and that large buffers carry the kernel's huge-page advice. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "graft.h"

typedef struct hook_log {
    void *last_malloc, *last_free;
    size_t last_bytes;
    int fail;
} hook_log;

static hook_log hooks_seen;

static void *logging_malloc(size_t bytes)
{
    if (hooks_seen.fail)
        return NULL;
    hooks_seen.last_bytes = bytes;
    return hooks_seen.last_malloc = malloc(bytes);
}

static void *logging_realloc(void *p, size_t bytes) { return realloc(p, bytes); }

static void logging_free(void *p)
{
    hooks_seen.last_free = p;
    free(p);
}

static void use_logging_hooks(void)
{
    memset(&hooks_seen, 0, sizeof hooks_seen);
    graft_allocator a = {logging_malloc, logging_realloc, logging_free};
    graft_set_allocator(&a);
}

static void small_buffers_align_to_64_bytes(void **state)
{
    (void)state;
    use_logging_hooks();
    const size_t sizes[] = {1, 3, 64, 1000, GRAFT_HUGE_BYTES - 1};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        unsigned char *p = graft__malloc_aligned(sizes[i]);
        assert_non_null(p);
        assert_int_equal((uintptr_t)p % 64, 0);
        /* The hook's block holds the whole buffer. */
        unsigned char *raw = hooks_seen.last_malloc;
        assert_true(p > raw && p + sizes[i] <= raw + hooks_seen.last_bytes);
        memset(p, 0xab, sizes[i]);
        graft__free_aligned(p);
        assert_ptr_equal(hooks_seen.last_free, raw);
    }
    graft_set_allocator(NULL);
}

/* The VmFlags line of the mapping that holds addr in /proc/self/smaps. */
static int vm_flags_of(const void *addr, char *flags, size_t cap)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f)
        return 0;
    char line[512];
    int inside = 0, found = 0;
    while (!found && fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' '))
            inside = (uintptr_t)addr >= lo && (uintptr_t)addr < hi;
        else if (inside && strncmp(line, "VmFlags:", 8) == 0) {
            snprintf(flags, cap, "%s", line + 8);
            found = 1;
        }
    }
    fclose(f);
    return found;
}

static void large_buffers_align_to_huge_pages_and_ask_for_them(void **state)
{
    (void)state;
    use_logging_hooks();
    const size_t bytes = 3 * (size_t)GRAFT_HUGE_BYTES + 12345;
    unsigned char *p = graft__malloc_aligned(bytes);
    assert_non_null(p);
    assert_int_equal((uintptr_t)p % GRAFT_HUGE_ALIGN, 0);
    unsigned char *raw = hooks_seen.last_malloc;
    assert_true(p > raw && p + bytes <= raw + hooks_seen.last_bytes);
    memset(p, 1, bytes);
    /* Where the kernel has transparent huge pages, the advice must be on the
     * mapping ("hg" in VmFlags); elsewhere madvise fails and nothing is asked. */
    FILE *thp = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    if (thp) {
        fclose(thp);
        char flags[256];
        assert_true(vm_flags_of(p, flags, sizeof flags));
        printf("    VmFlags of the buffer's mapping:%s", flags);
        assert_non_null(strstr(flags, " hg"));
    }
    graft__free_aligned(p);
    assert_ptr_equal(hooks_seen.last_free, raw);
    graft_set_allocator(NULL);
}

static void failing_allocator_gives_null(void **state)
{
    (void)state;
    use_logging_hooks();
    hooks_seen.fail = 1;
    assert_null(graft__malloc_aligned(100));
    assert_null(graft__malloc_aligned(GRAFT_HUGE_BYTES));
    assert_null(graft__malloc_aligned(SIZE_MAX - 8));
    graft_set_allocator(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(small_buffers_align_to_64_bytes),
        cmocka_unit_test(large_buffers_align_to_huge_pages_and_ask_for_them),
        cmocka_unit_test(failing_allocator_gives_null),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
