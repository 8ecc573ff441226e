/* The hardware's ceiling for the forward's sum: a hand-written AVX-512 gather, as fast
 * as this project could make it, with no validation and no Python.  Not part of nbbag;
 * benchmarks/ceiling.py builds it with the system C compiler and times it beside nbbag
 * and torch.
 *
 * out[b] = the sum of the rows W[ids[p]] of bag b (offsets: B + 1, CSR), for rows of
 * D = 16 * LINES floats (LINES cache lines, 64-byte aligned).  Each row sits in LINES
 * zmm accumulators; the first `prefetched` lines of the row `distance` tokens ahead are
 * prefetched (none when either is 0).  OpenMP, static schedule over bags: thread t
 * owns its bags' rows of out.
 */
#include <immintrin.h>
#include <stdint.h>

#define DEFINE_GATHER(LINES)                                                          \
    void gather_sum_##LINES(const float *weight, const int64_t *ids,                  \
                            const int64_t *offsets, int64_t num_bags, float *out,     \
                            int64_t distance, int prefetched, int threads)            \
    {                                                                                 \
        const int64_t width = 16 * LINES, total = offsets[num_bags];                  \
        _Pragma("omp parallel for schedule(static) num_threads(threads)")             \
        for (int64_t b = 0; b < num_bags; b++) {                                      \
            __m512 acc[LINES];                                                        \
            for (int l = 0; l < LINES; l++)                                           \
                acc[l] = _mm512_setzero_ps();                                         \
            for (int64_t p = offsets[b]; p < offsets[b + 1]; p++) {                   \
                if (distance > 0 && p + distance < total) {                           \
                    const char *ahead = (const char *)(weight + ids[p + distance] * width); \
                    for (int l = 0; l < prefetched; l++)                              \
                        _mm_prefetch(ahead + 64 * l, _MM_HINT_T0);                    \
                }                                                                     \
                const float *row = weight + ids[p] * width;                           \
                for (int l = 0; l < LINES; l++)                                       \
                    acc[l] = _mm512_add_ps(acc[l], _mm512_load_ps(row + 16 * l));     \
            }                                                                         \
            for (int l = 0; l < LINES; l++)                                           \
                _mm512_storeu_ps(out + b * width + 16 * l, acc[l]);                   \
        }                                                                             \
    }

DEFINE_GATHER(1)  /* D = 16 */
DEFINE_GATHER(4)  /* D = 64 */
DEFINE_GATHER(16) /* D = 256 */
