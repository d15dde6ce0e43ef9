#ifndef MTOK_READER_KERNELS_H
#define MTOK_READER_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/// bf16 values → float32 bit patterns (the bf16 bits in the high half of each word).
/// `lo`/`hi`: the low and high bytes of each value, as two byte planes (a shuffled record) or
/// interleaved (`hi == lo + 1`, `step == 2`: an unshuffled one). Writes `n` words to `dst`.
void mtok_bf16_to_f32_planes(const uint8_t *lo, const uint8_t *hi, uint32_t *dst, size_t n);
void mtok_bf16_to_f32_interleaved(const uint8_t *src, uint32_t *dst, size_t n);

/// Starts loading the cache line at `p` (a hint; never faults).
void mtok_prefetch(const void *p);

/// Makes the streaming stores of the functions above visible to other threads; call once
/// before handing the written memory to another thread.
void mtok_reader_store_fence(void);

#endif
