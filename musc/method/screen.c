/* Kernels of the bf16-screened nearest-patch search (musc/screening.py explains the method).
 *
 * S is the bf16 product of A's patches (rows) and B's patches (columns), row-major, as raw uint16
 * words, for ONE image of A: L rows x n_b * L columns. A "row segment" is one A patch against the L
 * patches of one B image; a "column segment" is one B patch against the L patches of the A image.
 * Work comes in chunks of 16 entries: AVX-512 where the compiler targets it, plain loops elsewhere.
 */
#include <stdint.h>
#include <string.h>

#define CHUNK 16
#define INF __builtin_inff()

static inline float bf16_to_float(uint16_t word)
{
    uint32_t bits = (uint32_t)word << 16;
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

#if defined(__AVX512F__)
#include <immintrin.h>

typedef __m512 lanes_t;

static inline __m512 load_bf16(const uint16_t *s)
{
    __m512i words = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)s));
    return _mm512_castsi512_ps(_mm512_slli_epi32(words, 16));
}

static inline lanes_t lanes_init(void) { return _mm512_set1_ps(-INF); }

/* lanes = max(lanes, s[0:16]); column[0:16] = max(column[0:16], s[0:16]) */
static inline lanes_t chunk_max(const uint16_t *s, float *column, lanes_t lanes)
{
    __m512 v = load_bf16(s);
    _mm512_storeu_ps(column, _mm512_max_ps(_mm512_loadu_ps(column), v));
    return _mm512_max_ps(lanes, v);
}

static inline float lanes_max(lanes_t lanes) { return _mm512_reduce_max_ps(lanes); }

/* Bit k: s[k] >= row_floor (low 16 bits) and s[k] >= column_floor[k] (high 16 bits). */
static inline uint32_t chunk_hits(const uint16_t *s, float row_floor, const float *column_floor)
{
    __m512 v = load_bf16(s);
    uint32_t in_row = _mm512_cmp_ps_mask(v, _mm512_set1_ps(row_floor), _CMP_GE_OQ);
    uint32_t in_column = _mm512_cmp_ps_mask(v, _mm512_loadu_ps(column_floor), _CMP_GE_OQ);
    return in_row | (in_column << 16);
}

static inline float dot(const float *x, const float *y, int64_t n)
{
    __m512 sum = _mm512_setzero_ps();
    int64_t c = 0;
    for (; c + CHUNK <= n; c += CHUNK)
        sum = _mm512_fmadd_ps(_mm512_loadu_ps(x + c), _mm512_loadu_ps(y + c), sum);
    float total = _mm512_reduce_add_ps(sum);
    for (; c < n; c++)
        total += x[c] * y[c];
    return total;
}

#else

typedef struct { float v[CHUNK]; } lanes_t;

static inline lanes_t lanes_init(void)
{
    lanes_t lanes;
    for (int k = 0; k < CHUNK; k++)
        lanes.v[k] = -INF;
    return lanes;
}

static inline lanes_t chunk_max(const uint16_t *s, float *column, lanes_t lanes)
{
    for (int k = 0; k < CHUNK; k++) {
        const float v = bf16_to_float(s[k]);
        column[k] = v > column[k] ? v : column[k];
        lanes.v[k] = v > lanes.v[k] ? v : lanes.v[k];
    }
    return lanes;
}

static inline float lanes_max(lanes_t lanes)
{
    float best = -INF;
    for (int k = 0; k < CHUNK; k++)
        best = lanes.v[k] > best ? lanes.v[k] : best;
    return best;
}

static inline uint32_t chunk_hits(const uint16_t *s, float row_floor, const float *column_floor)
{
    uint32_t bits = 0;
    for (int k = 0; k < CHUNK; k++) {
        const float v = bf16_to_float(s[k]);
        bits |= (uint32_t)(v >= row_floor) << k | (uint32_t)(v >= column_floor[k]) << (k + 16);
    }
    return bits;
}

static inline float dot(const float *x, const float *y, int64_t n)
{
    float lanes[CHUNK] = {0};
    int64_t c = 0;
    for (; c + CHUNK <= n; c += CHUNK)
        for (int k = 0; k < CHUNK; k++)
            lanes[k] += x[c + k] * y[c + k];
    float total = 0.0f;
    for (int k = 0; k < CHUNK; k++)
        total += lanes[k];
    for (; c < n; c++)
        total += x[c] * y[c];
    return total;
}

#endif

/* Maximum of every row segment (row_max: L x n_b) and column segment (col_max: n_b * L). */
void musc_segment_maxima(const uint16_t *S, int64_t n_b, int64_t L, float *restrict row_max,
                         float *restrict col_max)
{
    const int64_t cols = n_b * L;
    for (int64_t c = 0; c < cols; c++)
        col_max[c] = -INF;
    for (int64_t p = 0; p < L; p++) {
        const uint16_t *row = S + p * cols;
        for (int64_t j = 0; j < n_b; j++) {
            const uint16_t *segment = row + j * L;
            float *column = col_max + j * L;
            lanes_t lanes = lanes_init();
            int64_t c = 0;
            for (; c + CHUNK <= L; c += CHUNK)
                lanes = chunk_max(segment + c, column + c, lanes);
            float best = lanes_max(lanes);
            for (; c < L; c++) {
                const float v = bf16_to_float(segment[c]);
                best = v > best ? v : best;
                column[c] = v > column[c] ? v : column[c];
            }
            row_max[p * n_b + j] = best;
        }
    }
}

/* Exact fp32 squared distance |x|^2 + |y|^2 - 2 x.y for every entry of S at or above its row
 * segment's floor (row_floor: L x n_b) or its column segment's floor (col_floor: n_b * L); the
 * minimum per segment goes to row_min / col_min. X: the image's L patches, Y: all n_b * L patches of
 * B. Returns the number of candidates, or -1 as soon as it exceeds limit. */
int64_t musc_candidate_minima(const uint16_t *S, int64_t n_b, int64_t L, const float *row_floor,
                              const float *col_floor, const float *X, const float *Y, const float *x_norm,
                              const float *y_norm, int64_t channels, float *restrict row_min,
                              float *restrict col_min, int64_t limit)
{
    const int64_t cols = n_b * L;
    int64_t candidates = 0;
    for (int64_t c = 0; c < cols; c++)
        col_min[c] = INF;
    for (int64_t p = 0; p < L; p++) {
        const uint16_t *row = S + p * cols;
        const float *x = X + p * channels;
        for (int64_t j = 0; j < n_b; j++) {
            const float floor_j = row_floor[p * n_b + j];
            float best = INF;
            for (int64_t start = j * L; start < (j + 1) * L; start += CHUNK) {
                uint32_t bits;
                if (start + CHUNK <= (j + 1) * L) {
                    bits = chunk_hits(row + start, floor_j, col_floor + start);
                } else {
                    bits = 0;
                    for (int64_t c = start; c < (j + 1) * L; c++) {
                        const float v = bf16_to_float(row[c]);
                        bits |= (uint32_t)(v >= floor_j) << (c - start) | (uint32_t)(v >= col_floor[c]) << (c - start + 16);
                    }
                }
                for (uint32_t lanes = (bits | bits >> 16) & 0xffffu; lanes; lanes &= lanes - 1) {
                    const int k = __builtin_ctz(lanes);
                    const int64_t c = start + k;
                    const int in_row = (bits >> k) & 1, in_column = (bits >> (k + 16)) & 1;
                    candidates += in_row + in_column;
                    if (candidates > limit)
                        return -1;
                    const float d = x_norm[p] + y_norm[c] - 2.0f * dot(x, Y + c * channels, channels);
                    if (in_row && d < best)
                        best = d;
                    if (in_column && d < col_min[c])
                        col_min[c] = d;
                }
            }
            row_min[p * n_b + j] = best;
        }
    }
    return candidates;
}
