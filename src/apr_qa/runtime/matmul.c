/* Matrix products and dequantization straight from GGML blocks (Q8_0, Q4_0, Q4_K, Q6_K), float32.
 *
 * y[m][n] = sum_k x[m][k] * w[n][k] for a weight stored as rows of blocks. Activations stay float32
 * (llama.cpp quantizes them to 8 bits; this does not), each block's integers are multiplied by the
 * activations in float32 and the block's scale is applied to the block's sum, as ggml's dot
 * products do; sums accumulate in float32. The dequantizers reproduce ggml's (and apr_qa.quant's)
 * float32 values bit for bit: the library is built with -ffp-contract=off, so no product there is
 * fused into an addition.
 *
 * Rows are shared between the threads of the OpenMP runtime torch has already loaded (same soname),
 * so torch.set_num_threads governs these loops too.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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
    #pragma omp parallel for schedule(static) if (parallel)
    for (int64_t r = 0; r < n; r++) {
        const uint8_t *row = w + r * row_bytes;
        for (int64_t i0 = 0; i0 < m; i0 += TILE) {
            tile_t t = {x + i0 * k, xs + i0 * groups, k, groups, (int)(m - i0 < TILE ? m - i0 : TILE)};
            float out[TILE];
            switch (type) {
                case F32: FOR_TILE(row_f32); break;
                case BF16: FOR_TILE(row_bf16); break;
                case Q8_0: FOR_TILE(row_q8_0); break;
                case Q4_0: FOR_TILE(row_q4_0); break;
                case Q4_K: FOR_TILE(row_q4_k); break;
                default: FOR_TILE(row_q6_k); break;
            }
            for (int i = 0; i < t.rows; i++) y[(i0 + i) * n + r] = out[i];
        }
    }
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
