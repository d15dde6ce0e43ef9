// Widening bf16 to float32 while a batch is filled.
//
// A batch of float32 latents (256 records × 16 KiB) is larger than the caches, so every cache
// line the widening writes is first read from memory (read-for-ownership) and later evicted:
// three memory transfers per line. Streaming (non-temporal) stores write whole lines straight
// to memory, one transfer, which is what lets decoding keep up with zstd. Swift has no
// spelling for them, hence this file. The arithmetic is a byte interleave, exact in every path.

#include "reader_kernels.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#define MTOK_STREAMING 1
#else
#define MTOK_STREAMING 0
#endif

static inline uint32_t widen(uint8_t lo, uint8_t hi) { return (uint32_t)lo << 16 | (uint32_t)hi << 24; }

void mtok_bf16_to_f32_planes(const uint8_t *lo, const uint8_t *hi, uint32_t *dst, size_t n) {
    size_t i = 0;
#if MTOK_STREAMING
    // Scalar until dst is 16-byte aligned (streaming stores need it), then 16 values a step.
    for (; i < n && ((uintptr_t)(dst + i) & 15) != 0; i++) dst[i] = widen(lo[i], hi[i]);
    const __m128i zero = _mm_setzero_si128();
    for (; i + 16 <= n; i += 16) {
        __m128i l = _mm_loadu_si128((const __m128i *)(lo + i));
        __m128i h = _mm_loadu_si128((const __m128i *)(hi + i));
        __m128i w0 = _mm_unpacklo_epi8(l, h), w1 = _mm_unpackhi_epi8(l, h);  // 16-bit values
        __m128i *out = (__m128i *)(dst + i);
        _mm_stream_si128(out, _mm_unpacklo_epi16(zero, w0));
        _mm_stream_si128(out + 1, _mm_unpackhi_epi16(zero, w0));
        _mm_stream_si128(out + 2, _mm_unpacklo_epi16(zero, w1));
        _mm_stream_si128(out + 3, _mm_unpackhi_epi16(zero, w1));
    }
#endif
    for (; i < n; i++) dst[i] = widen(lo[i], hi[i]);
}

void mtok_bf16_to_f32_interleaved(const uint8_t *src, uint32_t *dst, size_t n) {
    size_t i = 0;
#if MTOK_STREAMING
    for (; i < n && ((uintptr_t)(dst + i) & 15) != 0; i++) dst[i] = widen(src[2 * i], src[2 * i + 1]);
    const __m128i zero = _mm_setzero_si128();
    for (; i + 8 <= n; i += 8) {
        __m128i v = _mm_loadu_si128((const __m128i *)(src + 2 * i));  // eight little-endian bf16
        __m128i *out = (__m128i *)(dst + i);
        _mm_stream_si128(out, _mm_unpacklo_epi16(zero, v));
        _mm_stream_si128(out + 1, _mm_unpackhi_epi16(zero, v));
    }
#endif
    for (; i < n; i++) dst[i] = widen(src[2 * i], src[2 * i + 1]);
}

void mtok_prefetch(const void *p) { __builtin_prefetch(p); }

void mtok_reader_store_fence(void) {
#if MTOK_STREAMING
    _mm_sfence();
#endif
}
