// Inner loops of the Pillow-exact resampler (see PillowResampler.swift for the arithmetic).
//
// They live in C for 32-bit lane multiplies and byte shuffles: baseline x86-64 (SSE2) has no
// pmulld or pshufb, so the Swift versions stayed scalar; here each kernel is compiled for several instruction
// sets and the loader picks the best one the CPU has (GCC/Clang function multiversioning).
// The arithmetic is the same integer arithmetic in every version, so results never depend on it.

#include "image_shims.h"

#include <string.h>

#if defined(__x86_64__) && defined(__linux__) && (defined(__clang__) || defined(__GNUC__))
#define MTOK_MULTIVERSION __attribute__((target_clones("avx2", "sse4.1", "default")))
#else
#define MTOK_MULTIVERSION
#endif


static inline uint8_t clip8(int32_t v) {
    int32_t s = v >> MTOK_RESAMPLE_PRECISION_BITS; // arithmetic shift: floor
    return (uint8_t)(s < 0 ? 0 : (s > 255 ? 255 : s));
}

typedef uint8_t mtok_v16u8 __attribute__((vector_size(16)));

// (a + b + 1) >> 1 per byte without widening: the same value as the fixed-point sum
// (half + a * half + b * half) >> PRECISION_BITS of two weights of one half each.
static inline mtok_v16u8 avg_up(mtok_v16u8 a, mtok_v16u8 b) { return (a | b) - ((a ^ b) >> 1); }

MTOK_MULTIVERSION
void mtok_resample_box_halve_rgb(const uint8_t *src, size_t src_stride, uint8_t *dst, size_t dst_stride, int rows,
                                 int out_width) {
    for (int y = 0; y < rows; y++) {
        const uint8_t *p = src + (size_t)y * src_stride;
        uint8_t *out = dst + (size_t)y * dst_stride;
        int x = 0;
        // Five output pixels per step from 30 input bytes, loaded as bytes 0-15 and 14-29; the
        // shuffles gather the even and the odd input pixels. The 16-byte store writes one byte
        // past the five pixels, which the next step overwrites: hence the margin of one pixel.
        for (; x + 6 <= out_width; x += 5, p += 30) {
            mtok_v16u8 lo, hi;
            memcpy(&lo, p, 16);
            memcpy(&hi, p + 14, 16);
            mtok_v16u8 even = __builtin_shufflevector(lo, hi, 0, 1, 2, 6, 7, 8, 12, 13, 14, 20, 21, 22, 26, 27, 28, 0);
            mtok_v16u8 odd = __builtin_shufflevector(lo, hi, 3, 4, 5, 9, 10, 11, 15, 18, 19, 23, 24, 25, 29, 30, 31, 0);
            mtok_v16u8 v = avg_up(even, odd);
            memcpy(out + x * 3, &v, 16);
        }
        for (; x < out_width; x++, p += 6) {
            out[x * 3] = (uint8_t)((p[0] + p[3] + 1) >> 1);
            out[x * 3 + 1] = (uint8_t)((p[1] + p[4] + 1) >> 1);
            out[x * 3 + 2] = (uint8_t)((p[2] + p[5] + 1) >> 1);
        }
    }
}

// Output row y = weighted sum of whole input rows; contiguous, so it vectorises fully.
static inline void vertical_body(const uint8_t *src, size_t row_bytes, uint8_t *dst, int out_rows,
                                 const int32_t *starts, const int32_t *counts, const int32_t *weights, int taps,
                                 int32_t *acc) {
    const int32_t half = 1 << (MTOK_RESAMPLE_PRECISION_BITS - 1);
    for (int y = 0; y < out_rows; y++) {
        const int32_t *k = weights + (size_t)y * taps;
        uint8_t *out = dst + (size_t)y * row_bytes;
        if (counts[y] == 2 && k[0] == half && k[1] == half) {
            // Two rows with weights of one half (BOX halving): byte averages, no widening.
            const uint8_t *r0 = src + (size_t)starts[y] * row_bytes, *r1 = r0 + row_bytes;
            size_t i = 0;
            for (; i + 16 <= row_bytes; i += 16) {
                mtok_v16u8 a, b;
                memcpy(&a, r0 + i, 16);
                memcpy(&b, r1 + i, 16);
                mtok_v16u8 v = avg_up(a, b);
                memcpy(out + i, &v, 16);
            }
            for (; i < row_bytes; i++) out[i] = (uint8_t)((r0[i] + r1[i] + 1) >> 1);
            continue;
        }
        for (size_t i = 0; i < row_bytes; i++) acc[i] = half;
        for (int j = 0; j < counts[y]; j++) {
            const uint8_t *r = src + (size_t)(starts[y] + j) * row_bytes;
            int32_t w = k[j];
            for (size_t i = 0; i < row_bytes; i++) acc[i] += (int32_t)r[i] * w;
        }
        for (size_t i = 0; i < row_bytes; i++) out[i] = clip8(acc[i]);
    }
}

MTOK_MULTIVERSION
void mtok_resample_vertical(const uint8_t *src, size_t row_bytes, uint8_t *dst, int out_rows,
                            const int32_t *starts, const int32_t *counts, const int32_t *weights, int taps,
                            int32_t *acc) {
    vertical_body(src, row_bytes, dst, out_rows, starts, counts, weights, taps, acc);
}

// dst row c, pixel r = src row r, pixel c, in 16x16 blocks to stay in cache. Pixels move as one
// 4-byte load and store, except the last of each run of 16, which copies 3 bytes. The extra byte
// read lies before source row r + 1's end (that row exists, as r is not the last), and the extra
// byte written is pixel r + 1's first, written right after.
static void transpose_rgb(const uint8_t *src, size_t src_stride, int rows, int cols, uint8_t *dst,
                          size_t dst_stride) {
    for (int r0 = 0; r0 < rows; r0 += 16) {
        int r1 = r0 + 16 < rows ? r0 + 16 : rows;
        for (int c0 = 0; c0 < cols; c0 += 16) {
            int c1 = c0 + 16 < cols ? c0 + 16 : cols;
            for (int c = c0; c < c1; c++) {
                const uint8_t *s = src + (size_t)r0 * src_stride + (size_t)c * 3;
                uint8_t *d = dst + (size_t)c * dst_stride + (size_t)r0 * 3;
                int r = r0;
                for (; r < r1 - 1; r++, s += src_stride, d += 3) {
                    uint32_t v;
                    memcpy(&v, s, 4);
                    memcpy(d, &v, 4);
                }
                d[0] = s[0];
                d[1] = s[1];
                d[2] = s[2];
            }
        }
    }
}

MTOK_MULTIVERSION
void mtok_resample_horizontal_rgb_transposed(const uint8_t *src, size_t src_stride, int rows, int cols, uint8_t *dst,
                                             size_t dst_stride, int out_width, const int32_t *starts,
                                             const int32_t *counts, const int32_t *weights, int taps,
                                             uint8_t *scratch_in, uint8_t *scratch_out, int32_t *acc) {
    // The horizontal sums computed as a vertical pass on the transposed image: row-contiguous loops vectorise, per-pixel windows do not.
    size_t column_bytes = (size_t)rows * 3;
    transpose_rgb(src, src_stride, rows, cols, scratch_in, column_bytes);
    vertical_body(scratch_in, column_bytes, scratch_out, out_width, starts, counts, weights, taps, acc);
    transpose_rgb(scratch_out, column_bytes, out_width, rows, dst, dst_stride);
}
