/* GGML block quantizers in C, byte-identical to ggml's quantize_row_{q4_0,q4_K,q6_K}_ref.
 *
 * Each sub-block goes through the reference code's float32 operations in the reference order.
 * The K-quant searches run LANES sub-blocks side by side in a vector (lane j = sub-block j), so
 * every sum over one sub-block still accumulates element by element, as the C loop does, while
 * the hardware works on several sub-blocks per instruction. Built by apr_qa/quant/native.py with
 * -ffp-contract=off: a fused multiply-add would round once where ggml rounds twice.
 *
 * The FP16 conversions and nearest_int are ggml's (MIT licence, ggml-impl.h and ggml-quants.c).
 */

#include <math.h>
#include <stdint.h>
#include <string.h>

#define QK_K 256
#define GROUP_MAX_EPS 1e-15f

/* One lane per sub-block; as wide as the target's native integer and float vectors, since wider
 * GCC vectors are emulated piecewise, often lane by lane. */
#if defined(__AVX2__)
#define LANES 8
#else
#define LANES 4
#endif
typedef float vf __attribute__((vector_size(4 * LANES)));
typedef int32_t vi __attribute__((vector_size(4 * LANES)));
typedef uint8_t vu8 __attribute__((vector_size(LANES)));

static inline float f32_from_bits(uint32_t w) {
    float f;
    memcpy(&f, &w, sizeof f);
    return f;
}

static inline uint32_t f32_to_bits(float f) {
    uint32_t w;
    memcpy(&w, &f, sizeof w);
    return w;
}

static inline float fp16_to_fp32(uint16_t h) {
    const uint32_t w = (uint32_t)h << 16;
    const uint32_t sign = w & UINT32_C(0x80000000);
    const uint32_t two_w = w + w;
    const uint32_t exp_offset = UINT32_C(0xE0) << 23;
    const float normalized_value = f32_from_bits((two_w >> 4) + exp_offset) * 0x1.0p-112f;
    const uint32_t magic_mask = UINT32_C(126) << 23;
    const float denormalized_value = f32_from_bits((two_w >> 17) | magic_mask) - 0.5f;
    const uint32_t denormalized_cutoff = UINT32_C(1) << 27;
    const uint32_t result =
        sign | (two_w < denormalized_cutoff ? f32_to_bits(denormalized_value) : f32_to_bits(normalized_value));
    return f32_from_bits(result);
}

static inline uint16_t fp32_to_fp16(float f) {
    float base = (fabsf(f) * 0x1.0p+112f) * 0x1.0p-110f;
    const uint32_t w = f32_to_bits(f);
    const uint32_t shl1_w = w + w;
    const uint32_t sign = w & UINT32_C(0x80000000);
    uint32_t bias = shl1_w & UINT32_C(0xFF000000);
    if (bias < UINT32_C(0x71000000)) bias = UINT32_C(0x71000000);
    base = f32_from_bits((bias >> 1) + UINT32_C(0x07800000)) + base;
    const uint32_t bits = f32_to_bits(base);
    const uint32_t exp_bits = (bits >> 13) & UINT32_C(0x00007C00);
    const uint32_t mantissa_bits = bits & UINT32_C(0x00000FFF);
    const uint32_t nonsign = exp_bits + mantissa_bits;
    return (uint16_t)((sign >> 16) | (shl1_w > UINT32_C(0xFF000000) ? UINT16_C(0x7E00) : nonsign));
}

static inline void store_fp16(uint8_t *dst, float f) {
    const uint16_t h = fp32_to_fp16(f);
    memcpy(dst, &h, sizeof h);
}

static inline float load_fp16(const uint8_t *src) {
    uint16_t h;
    memcpy(&h, src, sizeof h);
    return fp16_to_fp32(h);
}

/* Round half to even through the 1.5 * 2**23 trick; beyond 2**22 in magnitude it returns what
 * ggml's release build (no assert) returns. */
static inline int32_t nearest_int(float fval) {
    const float val = fval + 12582912.f;
    return (int32_t)(f32_to_bits(val) & 0x007fffff) - 0x00400000;
}

static inline int32_t clamp_i32(int32_t v, int32_t lo, int32_t hi) {
    return v < lo ? lo : (v > hi ? hi : v);
}

/* ------------------------------------------------------------------ lane-wise helpers */
/* Comparisons of vectors give int32 lanes of all ones (true) or zero. */

static inline vf as_vf(vi v) {
    vf f;
    memcpy(&f, &v, sizeof f);
    return f;
}

static inline vi as_vi(vf v) {
    vi i;
    memcpy(&i, &v, sizeof i);
    return i;
}

static inline vf select_vf(vi mask, vf a, vf b) { return as_vf((mask & as_vi(a)) | (~mask & as_vi(b))); }

static inline vf abs_vf(vf v) { return as_vf(as_vi(v) & 0x7fffffff); }

static inline vi min_vi(vi v, int32_t hi) {
    const vi above = v > hi;
    return (above & hi) | (~above & v);
}

static inline vi max_vi(vi v, int32_t lo) {
    const vi below = v < lo;
    return (below & lo) | (~below & v);
}

/* clamp(nearest_int(v), lo, hi), as floats */
static inline vf levels_vf(vf v, int32_t lo, int32_t hi) {
    const vi l = (as_vi(v + 12582912.f) & 0x007fffff) - 0x00400000;
    return __builtin_convertvector(min_vi(max_vi(l, lo), hi), vf);
}

static inline int any_lane(vi mask) {
    int32_t acc = 0;
    for (int j = 0; j < LANES; ++j) acc |= mask[j];
    return acc != 0;
}

/* ------------------------------------------------------------------------------------- Q4_0 */

/* Block layout: f16 d, 16 bytes of nibbles (elements 0-15 low, 16-31 high). */
void q4_0_quantize(const float *x, uint8_t *y, int64_t nblocks) {
    enum { NV = 32 / LANES };
    for (int64_t b = 0; b < nblocks; ++b, x += 32, y += 18) {
        vf v[NV];
        memcpy(v, x, sizeof v);
        /* ggml keeps the first element of largest magnitude. The largest and smallest values
         * (exact in any order) decide it unless +a and -a are both extreme. */
        vf hi_v = v[0], lo_v = v[0];
        for (int k = 1; k < NV; ++k) {
            hi_v = select_vf(v[k] > hi_v, v[k], hi_v);
            lo_v = select_vf(v[k] < lo_v, v[k], lo_v);
        }
        float hi = hi_v[0], lo = lo_v[0];
        for (int j = 1; j < LANES; ++j) {
            hi = hi_v[j] > hi ? hi_v[j] : hi;
            lo = lo_v[j] < lo ? lo_v[j] : lo;
        }
        float max = -lo > hi ? lo : hi;
        if (-lo == hi) {
            max = 0.0f; /* all zero: ggml's max stays +0 */
            for (int j = 0; hi != 0 && j < 32; ++j) {
                if (fabsf(x[j]) == hi) {
                    max = x[j];
                    break;
                }
            }
        }
        const float d = max / -8;
        const float id = d ? 1.0f / d : 0.0f;
        store_fp16(y, d);
        for (int k = 0; k < NV / 2; ++k) {
            /* (int8_t)(x * id + 8.5f) truncates; the values lie in [0, 16.5] */
            vi q0 = __builtin_convertvector(v[k] * id + 8.5f, vi);
            vi q1 = __builtin_convertvector(v[k + NV / 2] * id + 8.5f, vi);
            const vu8 packed = __builtin_convertvector(min_vi(q0, 15) | (min_vi(q1, 15) << 4), vu8);
            memcpy(y + 2 + k * LANES, &packed, sizeof packed);
        }
    }
}

/* ------------------------------------------------------------------------------------- Q4_K */

/* make_qkx2_quants(32, 15, x, weights, L, the_min, Laux, -1, 0.1, 20, false) for LANES
 * sub-blocks: lane j of xt[i] is element i of sub-block j. Levels come back as floats. */
static void q4_k_search(const vf xt[32], const vf wt[32], vf lbest[32], vf *scale_out, vf *the_min) {
    const vf zero = {0};
    vf laux[32];
    vf mn = xt[0], mx = xt[0], sum_w = wt[0], sum_x = wt[0] * xt[0];
    for (int i = 1; i < 32; ++i) {
        mn = select_vf(xt[i] < mn, xt[i], mn);
        mx = select_vf(xt[i] > mx, xt[i], mx);
        sum_w += wt[i];
        sum_x += wt[i] * xt[i];
    }
    mn = select_vf(mn > 0.f, zero, mn);
    const vi flat = mx == mn; /* ggml returns early: levels 0, scale 0 */
    vf iscale = 15.f / (mx - mn);
    vf scale = 1.f / iscale;
    vf best_error = zero;
    for (int i = 0; i < 32; ++i) {
        const vf l = levels_vf(iscale * (xt[i] - mn), 0, 15);
        lbest[i] = l;
        vf diff = scale * l + mn - xt[i];
        diff = diff * diff;
        best_error += wt[i] * diff;
    }
    for (int is = 0; is <= 20; ++is) {
        const float numerator = -1.f + 0.1f * is + 15;
        iscale = numerator / (mx - mn); /* mn is the best fit so far, as in ggml */
        vf sum_l = zero, sum_l2 = zero, sum_xl = zero;
        for (int i = 0; i < 32; ++i) {
            const vf l = levels_vf(iscale * (xt[i] - mn), 0, 15);
            laux[i] = l;
            const vf wl = wt[i] * l;
            sum_l += wl;
            sum_l2 += wl * l;
            sum_xl += wl * xt[i];
        }
        const vf D = sum_w * sum_l2 - sum_l * sum_l;
        vf this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
        vf this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
        const vi clamp = this_min > 0.f;
        this_min = select_vf(clamp, zero, this_min);
        this_scale = select_vf(clamp, sum_xl / sum_l2, this_scale);
        vf cur_error = zero;
        for (int i = 0; i < 32; ++i) {
            vf diff = this_scale * laux[i] + this_min - xt[i];
            diff = diff * diff;
            cur_error += wt[i] * diff;
        }
        const vi better = (D > 0.f) & ~flat & (cur_error < best_error);
        if (any_lane(better)) {
            best_error = select_vf(better, cur_error, best_error);
            scale = select_vf(better, this_scale, scale);
            mn = select_vf(better, this_min, mn);
            for (int i = 0; i < 32; ++i) lbest[i] = select_vf(better, laux[i], lbest[i]);
        }
    }
    for (int i = 0; i < 32; ++i) lbest[i] = select_vf(flat, zero, lbest[i]);
    *scale_out = select_vf(flat, zero, scale);
    *the_min = -mn;
}

static inline void q4_k_scale_min(int j, const uint8_t *q, uint8_t *d, uint8_t *m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4));
    }
}

/* Block layout: f16 d, f16 dmin, 12 bytes of 6-bit scales and mins, 128 bytes of nibbles. */
void q4_k_quantize(const float *x, uint8_t *y, int64_t nblocks) {
    enum { GROUPS = 8 / LANES };
    vf xt[GROUPS][32], wt[GROUPS][32], lbest[GROUPS][32];
    float scales[8], mins[8], flevels[8][32];
    uint8_t L[QK_K];
    for (int64_t b = 0; b < nblocks; ++b, x += QK_K, y += 144) {
        for (int g = 0; g < GROUPS; ++g) {
            vf sum_x2 = {0}, av_x;
            for (int i = 0; i < 32; ++i) {
                for (int j = 0; j < LANES; ++j) xt[g][i][j] = x[32 * (g * LANES + j) + i];
                sum_x2 += xt[g][i] * xt[g][i];
            }
            for (int j = 0; j < LANES; ++j) av_x[j] = sqrtf(sum_x2[j] / 32);
            for (int i = 0; i < 32; ++i) wt[g][i] = av_x + abs_vf(xt[g][i]);
            vf scale_v, min_v;
            q4_k_search(xt[g], wt[g], lbest[g], &scale_v, &min_v);
            for (int j = 0; j < LANES; ++j) {
                scales[g * LANES + j] = scale_v[j];
                mins[g * LANES + j] = min_v[j];
                for (int i = 0; i < 32; ++i) flevels[g * LANES + j][i] = lbest[g][i][j];
            }
        }

        float max_scale = 0, max_min = 0;
        for (int j = 0; j < 8; ++j) {
            if (scales[j] > max_scale) max_scale = scales[j];
            if (mins[j] > max_min) max_min = mins[j];
        }
        const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
        const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
        uint8_t *packed = y + 4;
        for (int j = 0; j < 8; ++j) {
            uint8_t ls = (uint8_t)nearest_int(inv_scale * scales[j]);
            uint8_t lm = (uint8_t)nearest_int(inv_min * mins[j]);
            ls = ls < 63 ? ls : 63;
            lm = lm < 63 ? lm : 63;
            if (j < 4) {
                packed[j] = ls;
                packed[j + 4] = lm;
            } else {
                packed[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
                packed[j - 4] |= (uint8_t)((ls >> 4) << 6);
                packed[j - 0] |= (uint8_t)((lm >> 4) << 6);
            }
        }
        store_fp16(y, max_scale / 63.f);
        store_fp16(y + 2, max_min / 63.f);

        /* Levels again with the stored (6-bit, f16) scales; a zero scale keeps the search's. */
        const float d_all = load_fp16(y), dmin_all = load_fp16(y + 2);
        for (int j = 0; j < 8; ++j) {
            uint8_t sc, m;
            q4_k_scale_min(j, packed, &sc, &m);
            const float d = d_all * sc;
            if (!d) {
                for (int i = 0; i < 32; ++i) L[32 * j + i] = (uint8_t)flevels[j][i];
                continue;
            }
            const float dm = dmin_all * m;
            for (int i = 0; i < 32; ++i) {
                L[32 * j + i] = (uint8_t)clamp_i32(nearest_int((x[32 * j + i] + dm) / d), 0, 15);
            }
        }
        uint8_t *q = y + 16;
        for (int j = 0; j < QK_K; j += 64, q += 32) {
            for (int l = 0; l < 32; ++l) q[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
        }
    }
}

/* ------------------------------------------------------------------------------------- Q6_K */

/* make_qx_quants(16, 32, x, L, rmse_type 1, NULL) for LANES sub-blocks: lane j of xt[i] is
 * element i of sub-block j. Levels come back as floats l + 32, or 0 for an all-zero sub-block. */
static void q6_k_search(const vf xt[16], vf lbest[16], vf *scale_out) {
    const vf zero = {0};
    vf amax = zero, max = zero, w[16], wx[16], lv[16];
    for (int i = 0; i < 16; ++i) {
        const vf ax = abs_vf(xt[i]);
        const vi gt = ax > amax;
        amax = select_vf(gt, ax, amax);
        max = select_vf(gt, xt[i], max);
        w[i] = xt[i] * xt[i];
        wx[i] = w[i] * xt[i];
    }
    vf iscale = -32.f / max;
    vf sumlx = zero, suml2 = zero;
    for (int i = 0; i < 16; ++i) {
        const vf l = levels_vf(iscale * xt[i], -32, 31);
        lbest[i] = l;
        sumlx += wx[i] * l;
        suml2 += w[i] * l * l;
    }
    vf scale = select_vf(suml2 != 0.f, sumlx / suml2, zero);
    vf best = scale * sumlx;
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) continue;
        const float numerator = -(32 + 0.1f * is);
        iscale = numerator / max;
        sumlx = suml2 = zero;
        for (int i = 0; i < 16; ++i) {
            const vf l = levels_vf(iscale * xt[i], -32, 31);
            lv[i] = l;
            sumlx += wx[i] * l;
            suml2 += w[i] * l * l;
        }
        const vi better = (suml2 > 0.f) & (sumlx * sumlx > best * suml2);
        if (any_lane(better)) {
            scale = select_vf(better, sumlx / suml2, scale);
            best = select_vf(better, scale * sumlx, best);
            for (int i = 0; i < 16; ++i) lbest[i] = select_vf(better, lv[i], lbest[i]);
        }
    }
    const vi all_zero = amax < GROUP_MAX_EPS;
    for (int i = 0; i < 16; ++i) lbest[i] = select_vf(all_zero, zero, lbest[i] + 32.f);
    *scale_out = select_vf(all_zero, zero, scale);
}

/* Block layout: 128 bytes ql (low 4 bits), 64 bytes qh (high 2 bits), 16 int8 scales, f16 d. */
void q6_k_quantize(const float *x, uint8_t *y, int64_t nblocks) {
    vf xt[16], lbest[16];
    float scales[16], flevels[16][16];
    uint8_t L[QK_K];
    for (int64_t b = 0; b < nblocks; ++b, x += QK_K, y += 210) {
        for (int g = 0; g < 16 / LANES; ++g) {
            for (int i = 0; i < 16; ++i) {
                for (int j = 0; j < LANES; ++j) xt[i][j] = x[16 * (g * LANES + j) + i];
            }
            vf scale_v;
            q6_k_search(xt, lbest, &scale_v);
            for (int j = 0; j < LANES; ++j) {
                scales[g * LANES + j] = scale_v[j];
                for (int i = 0; i < 16; ++i) flevels[g * LANES + j][i] = lbest[i][j];
            }
        }

        float max_scale = 0, max_abs_scale = 0;
        for (int ib = 0; ib < 16; ++ib) {
            const float abs_scale = fabsf(scales[ib]);
            if (abs_scale > max_abs_scale) {
                max_abs_scale = abs_scale;
                max_scale = scales[ib];
            }
        }
        if (max_abs_scale < GROUP_MAX_EPS) { /* ggml zeroes the whole block */
            memset(y, 0, 210);
            continue;
        }
        int8_t *sc = (int8_t *)(y + 192);
        const float iscale = -128.f / max_scale;
        store_fp16(y + 208, 1 / iscale);
        for (int ib = 0; ib < 16; ++ib) {
            const int32_t v = nearest_int(iscale * scales[ib]);
            sc[ib] = (int8_t)(v < 127 ? v : 127);
        }
        /* Levels again with the stored scales; a zero scale keeps the search's. */
        const float d_all = load_fp16(y + 208);
        for (int j = 0; j < 16; ++j) {
            const float d = d_all * sc[j];
            if (!d) {
                for (int i = 0; i < 16; ++i) L[16 * j + i] = (uint8_t)flevels[j][i];
                continue;
            }
            for (int i = 0; i < 16; ++i) {
                L[16 * j + i] = (uint8_t)(clamp_i32(nearest_int(x[16 * j + i] / d), -32, 31) + 32);
            }
        }
        uint8_t *ql = y, *qh = y + 128;
        for (int j = 0; j < QK_K; j += 128, ql += 64, qh += 32) {
            for (int l = 0; l < 32; ++l) {
                const uint8_t q1 = L[j + l + 0] & 0xF;
                const uint8_t q2 = L[j + l + 32] & 0xF;
                const uint8_t q3 = L[j + l + 64] & 0xF;
                const uint8_t q4 = L[j + l + 96] & 0xF;
                ql[l + 0] = (uint8_t)(q1 | (q3 << 4));
                ql[l + 32] = (uint8_t)(q2 | (q4 << 4));
                qh[l] = (uint8_t)((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) | ((L[j + l + 64] >> 4) << 4) |
                                  ((L[j + l + 96] >> 4) << 6));
            }
        }
    }
}
