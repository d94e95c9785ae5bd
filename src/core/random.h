/* Counter-based randomness: a value depends only on (seed, index), so results do
 * not depend on thread count or order, and a mask can be regenerated in backward
 * instead of stored. SplitMix64's finaliser mixes the counter. */
#ifndef GRAFT_CORE_RANDOM_H
#define GRAFT_CORE_RANDOM_H

#include <stdint.h>

static inline uint64_t graft__mix64(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1) with 24 random bits (exact in float). */
static inline float graft__uniform(uint64_t seed, uint64_t index)
{
    return (float)(graft__mix64(seed ^ graft__mix64(index)) >> 40) * (1.0f / 16777216.0f);
}

/* The seed of one stream derived from a parent seed and a label (node, step, ...). */
static inline uint64_t graft__seed_derive(uint64_t seed, uint64_t label)
{
    return graft__mix64(seed + 0x632be59bd9b4e019ull * (label + 1));
}

#endif
