#ifndef MTOK_IMAGE_SHIMS_H
#define MTOK_IMAGE_SHIMS_H

// C entry points for JPEG (libjpeg-turbo) and PNG (libpng) decoding.
//
// Both libraries report fatal errors by longjmp. A longjmp must never cross a Swift frame, so every
// setjmp lives in image_shims.c and each function here returns a status code plus a message instead.
// All functions are reentrant: no global state, one handle per decode.

#include <stddef.h>
#include <stdint.h>

/// Outcome of a shim call. The Swift side maps these to `ImageDecodingError.Kind`.
typedef enum {
    MTOK_IMG_OK = 0,
    MTOK_IMG_CORRUPT = 1,
    MTOK_IMG_TRUNCATED = 2,
    MTOK_IMG_UNSUPPORTED = 3,
    MTOK_IMG_TOO_LARGE = 4,
    MTOK_IMG_NO_MEMORY = 5,
} mtok_img_status;

/// A status plus the library's own message (NUL-terminated, possibly empty).
typedef struct {
    int status;
    char message[200];
} mtok_img_result;

// MARK: JPEG

/// Header facts, filled by `mtok_jpeg_open`.
typedef struct {
    uint32_t width;
    uint32_t height;
    int components;       ///< 1, 3 or 4
    int color_space;      ///< 1 gray, 2 RGB, 3 YCbCr, 4 CMYK, 5 YCCK (libjpeg's J_COLOR_SPACE numbering)
    int saw_adobe_marker; ///< APP14 "Adobe" present: 4-component data is stored inverted
    int is_progressive;
    const uint8_t *exif;  ///< first APP1 "Exif" payload, owned by the handle; NULL if none
    size_t exif_length;
} mtok_jpeg_info;

/// What to decode. Coordinates are in the scaled output grid (after 1/scale_denom).
typedef struct {
    int scale_denom;      ///< 1, 2, 4 or 8 (DCT-domain scaling)
    int invert_cmyk;      ///< 4-component data: 1 to treat samples as inverted (Adobe convention)
    int allow_truncated;  ///< 1 to accept libjpeg's premature-EOF warning instead of failing
    uint32_t x0, width;   ///< wanted columns; widened to the iMCU grid by `mtok_jpeg_start`
    uint32_t y0, height;  ///< wanted rows
} mtok_jpeg_request;

/// The region `mtok_jpeg_start` will actually deliver (columns widened to iMCU boundaries).
typedef struct {
    uint32_t x0, width;
    uint32_t y0, height;
    uint32_t full_width, full_height; ///< the whole scaled image
} mtok_jpeg_region;

typedef struct mtok_jpeg mtok_jpeg;

/// Parses the header of an in-memory JPEG. `data` must stay alive until `mtok_jpeg_close`.
/// Returns NULL (with `result` set) on failure; otherwise a handle the caller must close.
mtok_jpeg *mtok_jpeg_open(const void *data, size_t size, mtok_jpeg_info *info, mtok_img_result *result);

/// Starts decompression of a region (calls jpeg_start_decompress, jpeg_crop_scanline, jpeg_skip_scanlines).
int mtok_jpeg_start(mtok_jpeg *handle, const mtok_jpeg_request *request, mtok_jpeg_region *region,
                    mtok_img_result *result);

/// Decodes the started region as packed RGB into `out` (region.width * region.height * 3 bytes),
/// then reads the rest of the stream so that truncation anywhere is noticed.
int mtok_jpeg_read_rgb(mtok_jpeg *handle, uint8_t *out, mtok_img_result *result);

/// Releases everything the handle owns. Safe with NULL.
void mtok_jpeg_close(mtok_jpeg *handle);

// MARK: PNG

typedef struct {
    uint32_t width;
    uint32_t height;
    int bit_depth;
    int color_type;       ///< libpng's PNG_COLOR_TYPE_*
    int interlaced;
    int has_trns;
} mtok_png_info;

typedef struct mtok_png mtok_png;

/// Parses the header of an in-memory PNG. `data` must stay alive until `mtok_png_close`.
mtok_png *mtok_png_open(const void *data, size_t size, mtok_png_info *info, mtok_img_result *result);

/// Decodes to 8-bit samples (16-bit reduced to the high byte, low depths expanded) with
/// `*channels` = 1 (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA) per pixel into `out`, which must
/// hold width * height * 4 bytes. Palette images expand to RGB; tRNS becomes alpha only if
/// `want_trns_alpha`.
int mtok_png_read(mtok_png *handle, int want_trns_alpha, uint8_t *out, int *channels, mtok_img_result *result);

/// Releases everything the handle owns. Safe with NULL.
void mtok_png_close(mtok_png *handle);

/// Encodes packed 8-bit RGB as a PNG file at `path`.
int mtok_png_write_rgb(const char *path, const uint8_t *rgb, uint32_t width, uint32_t height,
                       mtok_img_result *result);

// MARK: Resampling kernels

/// Fixed-point fraction bits of the weights (Pillow's PRECISION_BITS for 8-bit images).
#define MTOK_RESAMPLE_PRECISION_BITS 22

/// Horizontal BOX halving of packed RGB rows (an even size halved): output pixel x of each row is
/// the per-channel (a + b + 1) >> 1 of input pixels 2x and 2x + 1 counted from `src`, which is
/// what the fixed-point sums give for two weights of one half. Reads 6 * out_width bytes per row.
void mtok_resample_box_halve_rgb(const uint8_t *src, size_t src_stride, uint8_t *dst, size_t dst_stride, int rows,
                                 int out_width);

/// Horizontal pass over packed RGB rows: output pixel x of each row sums `counts[x]` input pixels
/// from `starts[x]` with `weights[x * taps ...]`; sums start at half a unit, are shifted down by
/// the precision and clamped to 0...255. Computed by transposing over `cols` input pixels per
/// row: `scratch_in` holds cols * rows * 3 bytes, `scratch_out` out_width * rows * 3,
/// `acc` rows * 3 values; `starts` are relative to `src`.
void mtok_resample_horizontal_rgb_transposed(const uint8_t *src, size_t src_stride, int rows, int cols, uint8_t *dst,
                                             size_t dst_stride, int out_width, const int32_t *starts,
                                             const int32_t *counts, const int32_t *weights, int taps,
                                             uint8_t *scratch_in, uint8_t *scratch_out, int32_t *acc);

/// Vertical pass: output row y sums `counts[y]` whole input rows from row `starts[y]`.
/// `acc` is scratch space of `row_bytes` values.
void mtok_resample_vertical(const uint8_t *src, size_t row_bytes, uint8_t *dst, int out_rows,
                            const int32_t *starts, const int32_t *counts, const int32_t *weights, int taps,
                            int32_t *acc);

#endif
