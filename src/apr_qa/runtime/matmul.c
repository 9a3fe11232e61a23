/* Matrix products and dequantization straight from GGML blocks (Q8_0, Q4_0, Q4_K, Q6_K), float32.
 *
 * y[m][n] = sum_k x[m][k] * w[n][k] for a weight stored as rows of blocks. Activations stay float32
 * (llama.cpp quantizes them to 8 bits; this does not), each block's integers are multiplied by the
 * activations in float32 and the block's scale is applied to the block's sum, as ggml's dot
 * products do; sums accumulate in float32. The dequantizers reproduce ggml's (and apr_qa.quant's)
 * float32 values bit for bit: the library is built with -ffp-contract=off, so no product there is
 * fused into an addition.
 *
 * Rows of a matrix product are shared between this library's own worker threads (below); their
 * number follows the OpenMP runtime torch has already loaded (same soname), so torch.set_num_threads
 * governs them too, and so does the dequantization's OpenMP loop.
 */
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i32 __attribute__((vector_size(64)));
typedef uint8_t v16u8 __attribute__((vector_size(16)));
typedef uint16_t v16u16 __attribute__((vector_size(32)));

enum { F32 = 0, Q4_0 = 2, Q8_0 = 8, Q4_K = 12, Q6_K = 14, BF16 = 30 };  /* the .apr dtype codes */

#if defined(__F16C__)
#include <immintrin.h>
static inline float f16_to_f32(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}
#else
static float f16_to_f32(const uint8_t *p) {
    uint16_t h = (uint16_t)(p[0] | (p[1] << 8));
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else {  /* subnormal: normalize */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) { man <<= 1; exp--; }
            bits = sign | (exp << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}
#endif

/* 16 lanes: one AVX-512 register, two AVX2 ones (the compiler splits wider-than-native vectors). */
static inline v16f load16(const float *x) { v16f v; memcpy(&v, x, sizeof v); return v; }
static inline v16u8 bytes16(const uint8_t *p) { v16u8 v; memcpy(&v, p, sizeof v); return v; }
/* Bytes to floats through int32 lanes: gcc 12 scalarizes a direct conversion, and any sign
 * extension, so signed bytes are read in their offset form q + 128 and the offset removed later. */
static inline v16f u8_to_f(v16u8 q) { return __builtin_convertvector(__builtin_convertvector(q, v16i32), v16f); }
static inline float hsum(v16f v) {
    float s = 0;
    for (int i = 0; i < 16; i++) s += v[i];
    return s;
}

static void k_scale_min(const uint8_t *s, int j, float *sc, float *mn) {  /* ggml's get_scale_min_k4 */
    if (j < 4) {
        *sc = (float)(s[j] & 63);
        *mn = (float)(s[j + 4] & 63);
    } else {
        *sc = (float)((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4));
        *mn = (float)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

#pragma GCC push_options
#pragma GCC optimize("fp-contract=fast")
/* -- one row of blocks times up to TILE activation rows ---------------------------------------------
 * Each block's integers are converted to floats once and multiplied by every activation row of the
 * tile. Products of activations may fuse into their sums here (fused multiply-add: one rounding
 * fewer); the weights' values are exact integers and scales either way. The block offsets (Q8_0's
 * +128, Q4_0's -8, Q6_K's -32, Q4_K's mins) are applied through the sums of x over each sub-block
 * (`xs`), so the inner loops are convert, multiply, add. out[i] = the row's dot with x row i. */
#define TILE 4

typedef struct {
    const float *x, *xs;   /* first activation row and its sub-block sums */
    int64_t ldx, ldxs;     /* their row strides */
    int rows;              /* activation rows in this tile, <= TILE */
} tile_t;

/* Float rows (F32, and BF16 widened exactly to float32): the same tiles, no block scales. */
static inline __attribute__((always_inline)) void row_f32(const uint8_t *w, int64_t k, tile_t t, const int rows,
                                                          float *out) {
    v16f acc[TILE] = {{0}};
    const float *wf = (const float *)w;
    for (int64_t j = 0; j < k; j += 16) {
        const v16f wv = load16(wf + j);
        for (int i = 0; i < rows; i++) acc[i] += wv * load16(t.x + i * t.ldx + j);
    }
    for (int i = 0; i < rows; i++) out[i] = hsum(acc[i]);
}

static inline v16f bf16_to_f(const uint8_t *p) {
    v16u16 h;
    memcpy(&h, p, sizeof h);
    const v16i32 bits = __builtin_convertvector(h, v16i32) << 16;
    v16f f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline __attribute__((always_inline)) void row_bf16(const uint8_t *w, int64_t k, tile_t t, const int rows,
                                                           float *out) {
    v16f acc[TILE] = {{0}};
    for (int64_t j = 0; j < k; j += 16) {
        const v16f wv = bf16_to_f(w + 2 * j);
        for (int i = 0; i < rows; i++) acc[i] += wv * load16(t.x + i * t.ldx + j);
    }
    for (int i = 0; i < rows; i++) out[i] = hsum(acc[i]);
}

static inline __attribute__((always_inline)) void row_q8_0(const uint8_t *w, int64_t nblocks, tile_t t,
                                                          const int rows, float *out) {
    v16f acc[TILE] = {{0}};
    float off[TILE] = {0};
    for (int64_t b = 0; b < nblocks; b++, w += 34) {
        const float d = f16_to_f32(w);
        const v16f w0 = u8_to_f(bytes16(w + 2) ^ 0x80), w1 = u8_to_f(bytes16(w + 18) ^ 0x80);
        for (int i = 0; i < rows; i++) {
            const float *x = t.x + i * t.ldx + 32 * b;
            acc[i] += (w0 * load16(x) + w1 * load16(x + 16)) * d;
            off[i] += (128 * d) * t.xs[i * t.ldxs + b];
        }
    }
    for (int i = 0; i < rows; i++) out[i] = hsum(acc[i]) - off[i];
}

static inline __attribute__((always_inline)) void row_q4_0(const uint8_t *w, int64_t nblocks, tile_t t,
                                                          const int rows, float *out) {
    v16f acc[TILE] = {{0}};
    float off[TILE] = {0};
    for (int64_t b = 0; b < nblocks; b++, w += 18) {
        const float d = f16_to_f32(w);
        const v16u8 q = bytes16(w + 2);
        const v16f w0 = u8_to_f(q & 0x0F), w1 = u8_to_f(q >> 4);
        for (int i = 0; i < rows; i++) {
            const float *x = t.x + i * t.ldx + 32 * b;
            acc[i] += (w0 * load16(x) + w1 * load16(x + 16)) * d;
            off[i] += (8 * d) * t.xs[i * t.ldxs + b];
        }
    }
    for (int i = 0; i < rows; i++) out[i] = hsum(acc[i]) - off[i];
}

static inline __attribute__((always_inline)) void row_q4_k(const uint8_t *w, int64_t nblocks, tile_t t,
                                                          const int rows, float *out) {
    v16f acc[TILE] = {{0}};
    float off[TILE] = {0};
    for (int64_t b = 0; b < nblocks; b++, w += 144) {
        const float d = f16_to_f32(w), dmin = f16_to_f32(w + 2);
        const uint8_t *qs = w + 16;
        for (int c = 0; c < 4; c++, qs += 32) {
            const v16u8 q0 = bytes16(qs), q1 = bytes16(qs + 16);
            const v16f l0 = u8_to_f(q0 & 0x0F), l1 = u8_to_f(q1 & 0x0F), h0 = u8_to_f(q0 >> 4), h1 = u8_to_f(q1 >> 4);
            float sc, mn, sc2, mn2;
            k_scale_min(w + 4, 2 * c, &sc, &mn);
            k_scale_min(w + 4, 2 * c + 1, &sc2, &mn2);
            const float dl = d * sc, ml = dmin * mn, dh = d * sc2, mh = dmin * mn2;
            const int64_t g = 8 * b + 2 * c;
            for (int i = 0; i < rows; i++) {
                const float *x = t.x + i * t.ldx + 256 * b + 64 * c;
                acc[i] += (l0 * load16(x) + l1 * load16(x + 16)) * dl
                          + (h0 * load16(x + 32) + h1 * load16(x + 48)) * dh;
                off[i] += ml * t.xs[i * t.ldxs + g] + mh * t.xs[i * t.ldxs + g + 1];
            }
        }
    }
    for (int i = 0; i < rows; i++) out[i] = hsum(acc[i]) - off[i];
}

/* xs: sums over each 16 values (Q6_K's sub-blocks) */
static inline __attribute__((always_inline)) void row_q6_k(const uint8_t *w, int64_t nblocks, tile_t t,
                                                          const int rows, float *out) {
    v16f acc[TILE] = {{0}};
    float off[TILE] = {0};
    for (int64_t b = 0; b < nblocks; b++, w += 210) {
        const float d = f16_to_f32(w + 208);
        const int8_t *scales = (const int8_t *)(w + 192);
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = w + 64 * h, *qh = w + 128 + 32 * h;
            for (int l = 0; l < 32; l += 16) {  /* 16 values of one sub-block in each of four quarters */
                const v16u8 a = bytes16(ql + l), c = bytes16(ql + 32 + l), u = bytes16(qh + l);
                const v16f q1 = u8_to_f((a & 0x0F) | ((u & 3) << 4)), q2 = u8_to_f((c & 0x0F) | (((u >> 2) & 3) << 4));
                const v16f q3 = u8_to_f((a >> 4) | (((u >> 4) & 3) << 4));
                const v16f q4 = u8_to_f((c >> 4) | (((u >> 6) & 3) << 4));
                const int s = 8 * h + l / 16;
                const float s1 = d * scales[s], s2 = d * scales[s + 2], s3 = d * scales[s + 4], s4 = d * scales[s + 6];
                for (int i = 0; i < rows; i++) {
                    const float *x = t.x + i * t.ldx + 256 * b + 128 * h + l;
                    acc[i] += q1 * load16(x) * s1 + q2 * load16(x + 32) * s2 + q3 * load16(x + 64) * s3
                              + q4 * load16(x + 96) * s4;
                }
            }
        }
        for (int i = 0; i < rows; i++)
            for (int s = 0; s < 16; s++) off[i] += (32 * (d * scales[s])) * t.xs[i * t.ldxs + 16 * b + s];
    }
    for (int i = 0; i < rows; i++) out[i] = hsum(acc[i]) - off[i];
}

static int64_t block_elems(int type) {
    return (type == Q4_K || type == Q6_K) ? 256 : (type == F32 || type == BF16) ? 1 : 32;
}
static int64_t block_bytes(int type) {
    switch (type) {
        case F32: return 4;
        case BF16: return 2;
        case Q8_0: return 34;
        case Q4_0: return 18;
        case Q4_K: return 144;
        case Q6_K: return 210;
        default: return 0;
    }
}

/* the row kernel specialized for the tile's height (the compiler unrolls each) */
#define FOR_TILE(fn)                                        \
    switch (t.rows) {                                       \
        case 1: fn(row, per_row, t, 1, out); break;         \
        case 2: fn(row, per_row, t, 2, out); break;         \
        case 3: fn(row, per_row, t, 3, out); break;         \
        default: fn(row, per_row, t, TILE, out); break;     \
    }

typedef struct {
    int type;
    const uint8_t *w;
    int64_t n, k, per_row, row_bytes, groups, m;
    const float *x, *xs;
    float *y;
} matmul_t;

/* rows r0..r1 of the product */
static void matmul_rows(const void *arg, int64_t r0, int64_t r1) {
    const matmul_t *p = arg;
    const int64_t per_row = p->per_row, k = p->k, groups = p->groups, n = p->n;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = p->w + r * p->row_bytes;
        for (int64_t i0 = 0; i0 < p->m; i0 += TILE) {
            tile_t t = {p->x + i0 * k, p->xs + i0 * groups, k, groups, (int)(p->m - i0 < TILE ? p->m - i0 : TILE)};
            float out[TILE];
            switch (p->type) {
                case F32: FOR_TILE(row_f32); break;
                case BF16: FOR_TILE(row_bf16); break;
                case Q8_0: FOR_TILE(row_q8_0); break;
                case Q4_0: FOR_TILE(row_q4_0); break;
                case Q4_K: FOR_TILE(row_q4_k); break;
                default: FOR_TILE(row_q6_k); break;
            }
            for (int i = 0; i < t.rows; i++) p->y[(i0 + i) * n + r] = out[i];
        }
    }
}

static void run_rows(void (*fn)(const void *, int64_t, int64_t), const void *arg, int64_t n, int parallel);

/* y [m, n] = x [m, k] . w^T; w has n rows of blocks (or of F32 / BF16 values), k = the rows' padded width
 * (whole blocks; a multiple of 16 for float rows). parallel = 0 keeps the call on the calling thread.
 * Returns 0, or -1 for an unknown type, a bad width or no memory. */
int blocks_matmul(int type, const uint8_t *w, int64_t n, int64_t k, const float *x, int64_t m, float *y,
                  int parallel) {
    const int64_t per_row = k / block_elems(type), row_bytes = per_row * block_bytes(type);
    const int floats = type == F32 || type == BF16;
    if (!row_bytes || (floats && k % 16)) return -1;
    const int64_t group = type == Q6_K ? 16 : 32, groups = floats ? 1 : k / group;
    float *xs = malloc(sizeof(float) * (size_t)(m * groups));
    if (!xs) return -1;
    for (int64_t i = 0; i < m * groups; i++) {  /* sums of x over each sub-block (unused by float rows) */
        float s = 0;
        for (int64_t j = 0; !floats && j < group; j++) s += x[i * group + j];
        xs[i] = s;
    }
    const matmul_t job = {type, w, n, k, per_row, row_bytes, groups, m, x, xs, y};
    run_rows(matmul_rows, &job, n, parallel);
    free(xs);
    return 0;
}

#pragma GCC pop_options

/* -- exact dequantization of rows (ggml's float32 values) -------------------------------------------- */

static void deq_q8_0(const uint8_t *w, float *out) {
    const float d = f16_to_f32(w);
    for (int j = 0; j < 32; j++) out[j] = d * (float)(int8_t)w[2 + j];
}

static void deq_q4_0(const uint8_t *w, float *out) {
    const float d = f16_to_f32(w);
    for (int j = 0; j < 16; j++) {
        out[j] = d * (float)((int)(w[2 + j] & 0x0F) - 8);
        out[j + 16] = d * (float)((int)(w[2 + j] >> 4) - 8);
    }
}

static void deq_q4_k(const uint8_t *w, float *out) {
    const float d = f16_to_f32(w), dmin = f16_to_f32(w + 2);
    const uint8_t *qs = w + 16;
    for (int c = 0; c < 4; c++, qs += 32, out += 64) {
        float sc, mn;
        k_scale_min(w + 4, 2 * c, &sc, &mn);
        const float d1 = d * sc, m1 = dmin * mn;
        k_scale_min(w + 4, 2 * c + 1, &sc, &mn);
        const float d2 = d * sc, m2 = dmin * mn;
        for (int j = 0; j < 32; j++) {
            out[j] = d1 * (float)(qs[j] & 0x0F) - m1;
            out[j + 32] = d2 * (float)(qs[j] >> 4) - m2;
        }
    }
}

static void deq_q6_k(const uint8_t *w, float *out) {
    const float d = f16_to_f32(w + 208);
    const int8_t *scales = (const int8_t *)(w + 192);
    for (int h = 0; h < 2; h++) {
        const uint8_t *ql = w + 64 * h, *qh = w + 128 + 32 * h;
        float *o = out + 128 * h;
        for (int l = 0; l < 32; l++) {
            const int s = 8 * h + l / 16;
            const int q1 = (ql[l] & 0x0F) | ((qh[l] & 3) << 4), q2 = (ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4);
            const int q3 = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4), q4 = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
            o[l] = (d * (float)scales[s]) * (float)(q1 - 32);
            o[l + 32] = (d * (float)scales[s + 2]) * (float)(q2 - 32);
            o[l + 64] = (d * (float)scales[s + 4]) * (float)(q3 - 32);
            o[l + 96] = (d * (float)scales[s + 6]) * (float)(q4 - 32);
        }
    }
}

/* out [n, cols] = the n rows of w (padded width k) as float32; cols <= k drops the row padding. */
int blocks_dequantize(int type, const uint8_t *w, int64_t n, int64_t k, int64_t cols, float *out) {
    const int64_t elems = block_elems(type), per_row = k / elems, bytes = block_bytes(type);
    if (type != Q8_0 && type != Q4_0 && type != Q4_K && type != Q6_K) return -1;
    #pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < n; r++) {
        float buf[256];
        const uint8_t *row = w + r * per_row * bytes;
        for (int64_t b = 0; b < per_row; b++) {
            const int64_t start = b * elems, take = cols - start < elems ? cols - start : elems;
            if (take <= 0) break;
            switch (type) {
                case Q8_0: deq_q8_0(row + b * bytes, buf); break;
                case Q4_0: deq_q4_0(row + b * bytes, buf); break;
                case Q4_K: deq_q4_k(row + b * bytes, buf); break;
                default: deq_q6_k(row + b * bytes, buf); break;
            }
            memcpy(out + r * cols + start, buf, sizeof(float) * (size_t)take);
        }
    }
    return 0;
}
/* -- the per-token row operations of decoding ---------------------------------------------------------
 * Both replace torch calls whose fixed cost (dispatch, waking OpenMP threads) was several times their
 * arithmetic on one token: F.rms_norm and F.scaled_dot_product_attention cost ~35 and ~65 us per call
 * there, 4 ms of a 33 ms SmolLM2 float32 decode step. Single-threaded, float32, sums in float32 in a
 * different order than torch's (results agree to float32 rounding; tests/test_packed.py). */

/* y[r] = (x[r] * (1 / sqrt(mean(x[r]^2) + eps))) * w, for m rows of k floats (k % 16 == 0). */
int rms_norm_rows(const float *x, const float *w, int64_t m, int64_t k, float eps, float *y) {
    if (k % 16) return -1;
    for (int64_t r = 0; r < m; r++) {
        const float *xr = x + r * k;
        float *yr = y + r * k;
        v16f acc = {0};
        for (int64_t j = 0; j < k; j += 16) {
            const v16f v = load16(xr + j);
            acc += v * v;
        }
        const float inv = 1.0f / sqrtf(hsum(acc) / (float)k + eps);
        for (int64_t j = 0; j < k; j += 16) {
            const v16f v = load16(xr + j) * inv * load16(w + j);
            memcpy(yr + j, &v, sizeof v);
        }
    }
    return 0;
}

/* One query per head over the first n cache slots, grouped heads sharing a key/value head:
 * out[b][h] = softmax_s(scale * q[b][h] . k[b][g][s]) . v[b][g][s], g = h / (heads / kv_heads).
 * q, out: [batch, heads, dim]; k, v: the caches [batch, kv_heads, max_len, dim]; dim % 16 == 0. */
int attend_one(const float *q, const float *k, const float *v, int64_t batch, int64_t heads, int64_t kv_heads,
               int64_t n, int64_t max_len, int64_t dim, float scale, float *out) {
    if (dim % 16 || n < 1 || n > max_len || heads % kv_heads) return -1;
    float *p = malloc(sizeof(float) * (size_t)n);
    if (!p) return -1;
    const int64_t group = heads / kv_heads;
    for (int64_t b = 0; b < batch; b++) {
        for (int64_t h = 0; h < heads; h++) {
            const float *qh = q + (b * heads + h) * dim;
            const int64_t cache = (b * kv_heads + h / group) * max_len * dim;
            const float *kh = k + cache, *vh = v + cache;
            float top = -INFINITY;
            for (int64_t s = 0; s < n; s++) {
                v16f acc = {0};
                for (int64_t d = 0; d < dim; d += 16) acc += load16(qh + d) * load16(kh + s * dim + d);
                p[s] = hsum(acc) * scale;
                top = p[s] > top ? p[s] : top;
            }
            float total = 0;
            for (int64_t s = 0; s < n; s++) total += (p[s] = expf(p[s] - top));
            float *o = out + (b * heads + h) * dim;
            for (int64_t d = 0; d < dim; d += 16) {
                v16f acc = {0};
                for (int64_t s = 0; s < n; s++) acc += p[s] * load16(vh + s * dim + d);
                acc /= total;
                memcpy(o + d, &acc, sizeof acc);
            }
        }
    }
    free(p);
    return 0;
}

/* -- worker threads that spin between products ----------------------------------------------------------
 * A decoding step is a chain of ~100-200 small products with 20-150 us of Python between them. With
 * OMP_WAIT_POLICY=PASSIVE (which the project needs: spinning OpenMP threads starve torch on a shared
 * 2-core machine) every OpenMP parallel region wakes its sleeping threads through the kernel, which on
 * this VM cost ~70 us per product, a third of a float32 SmolLM2 step. These workers instead spin for
 * SPIN_NS after each product (pausing, yielding now and then to whatever else wants the core), so the
 * next product of the same step finds them awake, and sleep on a condition variable after that: an
 * idle runtime costs nothing. Rows are split into equal contiguous ranges, as OpenMP's static
 * schedule did, so each row's arithmetic, and every result, is unchanged. */
#define SPIN_NS 300000
#define MAX_WORKERS 63

static struct {
    pthread_mutex_t mu;
    pthread_cond_t wake;
    atomic_uint_fast64_t generation;  /* bumped for every product handed out */
    atomic_int pending;               /* workers still on the current product */
    void (*fn)(const void *, int64_t, int64_t);
    const void *arg;
    int64_t n;
    int parts;                        /* threads sharing the current product, the caller included */
    int workers;                      /* started */
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER};
static pthread_mutex_t pool_start = PTHREAD_MUTEX_INITIALIZER;

/* a spin-wait hint to the core (x86 `pause`, Arm `yield`); elsewhere a plain busy loop */
static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
    __asm__ __volatile__("yield");
#endif
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void share(int part, int parts, int64_t n, int64_t *r0, int64_t *r1) {
    *r0 = n * part / parts;
    *r1 = n * (part + 1) / parts;
}

typedef struct {
    int part;                  /* 1..workers; the caller is part 0 */
    uint_fast64_t generation;  /* when it was started: the products before it are not its */
} birth_t;

static void *worker(void *arg) {
    const birth_t birth = *(birth_t *)arg;
    free(arg);
    const int part = birth.part;
    uint_fast64_t seen = birth.generation;
    for (;;) {
        int64_t spin_until = now_ns() + SPIN_NS;
        for (unsigned i = 1; atomic_load_explicit(&pool.generation, memory_order_acquire) == seen; i++) {
            cpu_relax();
            if (i % 64 == 0 && now_ns() > spin_until) {
                pthread_mutex_lock(&pool.mu);
                while (atomic_load(&pool.generation) == seen) pthread_cond_wait(&pool.wake, &pool.mu);
                pthread_mutex_unlock(&pool.mu);
            } else if (i % 256 == 0) {
                sched_yield();
            }
        }
        seen = atomic_load(&pool.generation);
        if (part < pool.parts) {
            int64_t r0, r1;
            share(part, pool.parts, pool.n, &r0, &r1);
            pool.fn(pool.arg, r0, r1);
        }
        atomic_fetch_sub_explicit(&pool.pending, 1, memory_order_release);
    }
    return NULL;
}

static void forget_workers(void) { pool.workers = 0; }  /* a forked child has none of the parent's threads */

/* workers for `parts` threads in all, started once; returns how many there are */
static int ensure_workers(int parts) {
    pthread_mutex_lock(&pool_start);
    static int atfork;
    if (!atfork) atfork = !pthread_atfork(NULL, NULL, forget_workers);
    while (pool.workers < parts - 1 && pool.workers < MAX_WORKERS) {
        pthread_t t;
        pthread_attr_t attr;
        birth_t *birth = malloc(sizeof *birth);
        if (!birth) break;
        *birth = (birth_t){pool.workers + 1, atomic_load(&pool.generation)};
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        const int failed = pthread_create(&t, &attr, worker, birth);
        pthread_attr_destroy(&attr);
        if (failed) {
            free(birth);
            break;
        }
        pool.workers++;
    }
    const int workers = pool.workers;
    pthread_mutex_unlock(&pool_start);
    return workers;
}

static void run_rows(void (*fn)(const void *, int64_t, int64_t), const void *arg, int64_t n, int parallel) {
    const int wanted = parallel ? omp_get_max_threads() : 1;
    if (wanted <= 1 || n < wanted) {
        fn(arg, 0, n);
        return;
    }
    /* one product at a time: calls from several Python threads queue here (workers are started under
     * it too, so a new worker never mistakes the product being handed out for one before its time) */
    static pthread_mutex_t one_at_a_time = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&one_at_a_time);
    const int workers = ensure_workers(wanted);
    const int parts = 1 + (workers < wanted - 1 ? workers : wanted - 1);
    pool.fn = fn, pool.arg = arg, pool.n = n, pool.parts = parts;
    atomic_store(&pool.pending, workers);
    pthread_mutex_lock(&pool.mu);
    atomic_fetch_add_explicit(&pool.generation, 1, memory_order_release);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.mu);
    int64_t r0, r1;
    share(0, parts, n, &r0, &r1);
    fn(arg, r0, r1);
    while (atomic_load_explicit(&pool.pending, memory_order_acquire) > 0) cpu_relax();
    pthread_mutex_unlock(&one_at_a_time);
}
