// The only place where libjpeg's and libpng's longjmp-based error handling meets our code.
// Each public function sets up its own setjmp, so a library error unwinds only C frames and comes
// back as a status code plus the library's message. Handles own every allocation they make and
// free it in their close function, whatever path led there.

#include "image_shims.h"

#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>
#include <png.h>

static void set_result(mtok_img_result *result, int status, const char *message) {
    if (!result) return;
    result->status = status;
    if (message) {
        strncpy(result->message, message, sizeof(result->message) - 1);
        result->message[sizeof(result->message) - 1] = 0;
    } else {
        result->message[0] = 0;
    }
}

// MARK: - JPEG

struct mtok_jpeg_error {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    int saw_premature_eof; // libjpeg's JWRN_JPEG_EOF: it padded missing data and went on
    int status;
    char message[JMSG_LENGTH_MAX];
};

struct mtok_jpeg {
    struct jpeg_decompress_struct cinfo;
    struct mtok_jpeg_error err;
    struct jpeg_progress_mgr progress;
    int created;
    int started;
    int invert_cmyk;
    int allow_truncated;
    int out_components;     // 3 (RGB) or 4 (CMYK, converted here)
    uint32_t width, height; // region delivered
    uint8_t *scratch;       // one full output row, for CMYK conversion and the tail row
};

static int classify_jpeg_error(int code, int saw_eof) {
    switch (code) {
    case JERR_OUT_OF_MEMORY:
        return MTOK_IMG_NO_MEMORY;
    case JERR_BAD_PRECISION:
    case JERR_CONVERSION_NOTIMPL:
    case JERR_NOT_COMPILED:
    case JERR_SOF_UNSUPPORTED:
    case JERR_ARITH_NOTIMPL:
        return MTOK_IMG_UNSUPPORTED;
    case JERR_INPUT_EMPTY:
    case JERR_INPUT_EOF:
        return MTOK_IMG_TRUNCATED;
    default:
        // Errors that follow a premature end of data are symptoms of the truncation.
        return saw_eof ? MTOK_IMG_TRUNCATED : MTOK_IMG_CORRUPT;
    }
}

static void jpeg_error_exit_jump(j_common_ptr cinfo) {
    struct mtok_jpeg_error *err = (struct mtok_jpeg_error *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, err->message);
    err->status = classify_jpeg_error(err->pub.msg_code, err->saw_premature_eof);
    longjmp(err->jump, 1);
}

static void jpeg_emit_message_quiet(j_common_ptr cinfo, int msg_level) {
    struct mtok_jpeg_error *err = (struct mtok_jpeg_error *)cinfo->err;
    if (msg_level < 0) {
        // Warnings: libjpeg recovers from all of them. Only the end-of-data one changes the
        // picture (missing rows become gray), so remember it; stay silent on the others.
        err->pub.num_warnings++;
        if (err->pub.msg_code == JWRN_JPEG_EOF) err->saw_premature_eof = 1;
    }
}

static void jpeg_output_message_none(j_common_ptr cinfo) { (void)cinfo; }

// Real progressive JPEGs have a few dozen scans at most; a crafted one can have thousands of
// tiny scans, each a full pass over the coefficients (minutes of CPU for a small file).
#define MTOK_JPEG_MAX_SCANS 1000

static void jpeg_limit_scans(j_common_ptr common) {
    if (common->is_decompressor) {
        j_decompress_ptr cinfo = (j_decompress_ptr)common;
        if (cinfo->progressive_mode && cinfo->input_scan_number > MTOK_JPEG_MAX_SCANS) {
            struct mtok_jpeg_error *err = (struct mtok_jpeg_error *)common->err;
            snprintf(err->message, sizeof(err->message), "more than %d progressive scans", MTOK_JPEG_MAX_SCANS);
            err->status = MTOK_IMG_CORRUPT;
            longjmp(err->jump, 1);
        }
    }
}

mtok_jpeg *mtok_jpeg_open(const void *data, size_t size, mtok_jpeg_info *info, mtok_img_result *result) {
    set_result(result, MTOK_IMG_OK, NULL);
    mtok_jpeg *h = calloc(1, sizeof(mtok_jpeg));
    if (!h) {
        set_result(result, MTOK_IMG_NO_MEMORY, "out of memory");
        return NULL;
    }
    h->cinfo.err = jpeg_std_error(&h->err.pub);
    h->err.pub.error_exit = jpeg_error_exit_jump;
    h->err.pub.emit_message = jpeg_emit_message_quiet;
    h->err.pub.output_message = jpeg_output_message_none;
    if (setjmp(h->err.jump)) {
        set_result(result, h->err.status, h->err.message);
        mtok_jpeg_close(h);
        return NULL;
    }
    jpeg_create_decompress(&h->cinfo);
    h->created = 1;
    h->progress.progress_monitor = jpeg_limit_scans;
    h->cinfo.progress = &h->progress;
    jpeg_mem_src(&h->cinfo, (const unsigned char *)data, (unsigned long)size);
    jpeg_save_markers(&h->cinfo, JPEG_APP0 + 1, 0xFFFF);
    jpeg_read_header(&h->cinfo, TRUE);
    if (h->err.saw_premature_eof) {
        set_result(result, MTOK_IMG_TRUNCATED, "JPEG header ends prematurely");
        mtok_jpeg_close(h);
        return NULL;
    }
    memset(info, 0, sizeof(*info));
    info->width = h->cinfo.image_width;
    info->height = h->cinfo.image_height;
    info->components = h->cinfo.num_components;
    info->color_space = (int)h->cinfo.jpeg_color_space;
    info->saw_adobe_marker = h->cinfo.saw_Adobe_marker ? 1 : 0;
    info->is_progressive = h->cinfo.progressive_mode ? 1 : 0;
    for (jpeg_saved_marker_ptr m = h->cinfo.marker_list; m; m = m->next) {
        if (m->marker == JPEG_APP0 + 1 && m->data_length >= 6 && memcmp(m->data, "Exif\0\0", 6) == 0) {
            info->exif = m->data + 6;
            info->exif_length = m->data_length - 6;
            break;
        }
    }
    return h;
}

int mtok_jpeg_start(mtok_jpeg *h, const mtok_jpeg_request *req, mtok_jpeg_region *region, mtok_img_result *result) {
    set_result(result, MTOK_IMG_OK, NULL);
    if (setjmp(h->err.jump)) {
        set_result(result, h->err.status, h->err.message);
        return h->err.status;
    }
    j_decompress_ptr c = &h->cinfo;
    c->scale_num = 1;
    c->scale_denom = (unsigned int)(req->scale_denom > 0 ? req->scale_denom : 1);
    // Pillow's defaults, which the training pipelines used: accurate integer IDCT, fancy upsampling.
    c->dct_method = JDCT_ISLOW;
    c->do_fancy_upsampling = TRUE;
    int four = c->jpeg_color_space == JCS_CMYK || c->jpeg_color_space == JCS_YCCK;
    c->out_color_space = four ? JCS_CMYK : JCS_RGB;
    h->out_components = four ? 4 : 3;
    h->invert_cmyk = req->invert_cmyk;
    h->allow_truncated = req->allow_truncated;
    jpeg_start_decompress(c);
    h->started = 1;

    uint32_t fw = c->output_width, fh = c->output_height;
    uint32_t x0 = req->x0 < fw ? req->x0 : 0;
    uint32_t w = (req->width == 0 || x0 + req->width > fw) ? fw - x0 : req->width;
    uint32_t y0 = req->y0 < fh ? req->y0 : 0;
    uint32_t hh = (req->height == 0 || y0 + req->height > fh) ? fh - y0 : req->height;
    if (x0 > 0 || w < fw) {
        JDIMENSION xo = x0, ww = w;
        jpeg_crop_scanline(c, &xo, &ww);
        x0 = xo;
        w = ww;
    }
    h->scratch = malloc((size_t)c->output_width * 4 + 16);
    if (!h->scratch) {
        set_result(result, MTOK_IMG_NO_MEMORY, "out of memory");
        return MTOK_IMG_NO_MEMORY;
    }
    if (y0 > 0) jpeg_skip_scanlines(c, y0);
    h->width = w;
    h->height = hh;
    region->x0 = x0;
    region->width = w;
    region->y0 = y0;
    region->height = hh;
    region->full_width = fw;
    region->full_height = fh;
    return MTOK_IMG_OK;
}

static void cmyk_to_rgb_row(const uint8_t *in, uint8_t *out, uint32_t width, int invert) {
    // Subtractive model with the same rounding as Pillow's cmyk2rgb: each channel is
    // (255-k) - round(c*(255-k)/255), where round is the add-128 trick for division by 255.
    for (uint32_t x = 0; x < width; x++) {
        int cc = in[0], mm = in[1], yy = in[2], kk = in[3];
        if (invert) {
            cc = 255 - cc;
            mm = 255 - mm;
            yy = 255 - yy;
            kk = 255 - kk;
        }
        int nk = 255 - kk;
        int t;
        t = cc * nk + 128;
        out[0] = (uint8_t)(nk - (((t >> 8) + t) >> 8));
        t = mm * nk + 128;
        out[1] = (uint8_t)(nk - (((t >> 8) + t) >> 8));
        t = yy * nk + 128;
        out[2] = (uint8_t)(nk - (((t >> 8) + t) >> 8));
        in += 4;
        out += 3;
    }
}

int mtok_jpeg_read_rgb(mtok_jpeg *h, uint8_t *out, mtok_img_result *result) {
    set_result(result, MTOK_IMG_OK, NULL);
    if (!h->started) {
        set_result(result, MTOK_IMG_CORRUPT, "decompression not started");
        return MTOK_IMG_CORRUPT;
    }
    if (setjmp(h->err.jump)) {
        set_result(result, h->err.status, h->err.message);
        return h->err.status;
    }
    j_decompress_ptr c = &h->cinfo;
    size_t stride = (size_t)h->width * 3;
    uint32_t row = 0;
    while (row < h->height) {
        if (h->out_components == 3) {
            JSAMPROW rows[16];
            uint32_t n = h->height - row < 16 ? h->height - row : 16;
            for (uint32_t i = 0; i < n; i++) rows[i] = out + (size_t)(row + i) * stride;
            JDIMENSION got = jpeg_read_scanlines(c, rows, n);
            if (got == 0) break;
            row += got;
        } else {
            JSAMPROW r = h->scratch;
            if (jpeg_read_scanlines(c, &r, 1) != 1) break;
            cmyk_to_rgb_row(h->scratch, out + (size_t)row * stride, h->width, h->invert_cmyk);
            row++;
        }
    }
    // libjpeg pads missing data itself, so a short count means suspension, which a memory
    // source never does; still, never hand back rows that were not written.
    if (row < h->height) memset(out + (size_t)row * stride, 0, (size_t)(h->height - row) * stride);
    // Read the rest of the stream instead of stopping early, so a file cut short below the wanted
    // rows is still reported. Skipping to the very end would mark EOI as reached without reading,
    // so leave the last row to be decoded.
    uint32_t remaining = c->output_height - c->output_scanline;
    if (remaining > 1) jpeg_skip_scanlines(c, remaining - 1);
    while (c->output_scanline < c->output_height) {
        JSAMPROW r = h->scratch;
        if (jpeg_read_scanlines(c, &r, 1) != 1) break;
    }
    jpeg_finish_decompress(c);
    h->started = 0;
    if (h->err.saw_premature_eof && !h->allow_truncated) {
        set_result(result, MTOK_IMG_TRUNCATED, "premature end of JPEG data");
        return MTOK_IMG_TRUNCATED;
    }
    return MTOK_IMG_OK;
}

void mtok_jpeg_close(mtok_jpeg *h) {
    if (!h) return;
    if (h->created) {
        // jpeg_destroy cannot fail, but keep a landing pad in case a library build disagrees.
        if (setjmp(h->err.jump) == 0) jpeg_destroy_decompress(&h->cinfo);
    }
    free(h->scratch);
    free(h);
}

// MARK: - PNG

struct mtok_png {
    png_structp png;
    png_infop info;
    const uint8_t *data;
    size_t size;
    size_t pos;
    int ran_out;
    char message[200];
    uint32_t width, height;
    int color_type, bit_depth;
};

static void png_error_jump(png_structp png, png_const_charp msg) {
    struct mtok_png *h = (struct mtok_png *)png_get_error_ptr(png);
    if (h) {
        strncpy(h->message, msg ? msg : "libpng error", sizeof(h->message) - 1);
        h->message[sizeof(h->message) - 1] = 0;
    }
    png_longjmp(png, 1);
}

static void png_warning_quiet(png_structp png, png_const_charp msg) {
    (void)png;
    (void)msg;
}

static void png_read_memory(png_structp png, png_bytep out, size_t length) {
    struct mtok_png *h = (struct mtok_png *)png_get_io_ptr(png);
    if (h->size - h->pos < length) {
        h->ran_out = 1;
        png_error(png, "unexpected end of PNG data");
    }
    memcpy(out, h->data + h->pos, length);
    h->pos += length;
}

static int png_failure_status(struct mtok_png *h) {
    if (h->ran_out) return MTOK_IMG_TRUNCATED;
    if (strstr(h->message, "Not enough image data") || strstr(h->message, "Read Error")) return MTOK_IMG_TRUNCATED;
    if (strstr(h->message, "out of memory") || strstr(h->message, "Insufficient memory")) return MTOK_IMG_NO_MEMORY;
    return MTOK_IMG_CORRUPT;
}

mtok_png *mtok_png_open(const void *data, size_t size, mtok_png_info *info, mtok_img_result *result) {
    set_result(result, MTOK_IMG_OK, NULL);
    mtok_png *h = calloc(1, sizeof(mtok_png));
    if (!h) {
        set_result(result, MTOK_IMG_NO_MEMORY, "out of memory");
        return NULL;
    }
    h->data = data;
    h->size = size;
    h->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, h, png_error_jump, png_warning_quiet);
    if (!h->png) {
        free(h);
        set_result(result, MTOK_IMG_NO_MEMORY, "png_create_read_struct failed");
        return NULL;
    }
    h->info = png_create_info_struct(h->png);
    if (!h->info) {
        mtok_png_close(h);
        set_result(result, MTOK_IMG_NO_MEMORY, "png_create_info_struct failed");
        return NULL;
    }
    if (setjmp(png_jmpbuf(h->png))) {
        set_result(result, png_failure_status(h), h->message);
        mtok_png_close(h);
        return NULL;
    }
    // The pixel limit is enforced by the caller from these header values; lift libpng's own
    // 1,000,000-pixel side limit so one policy decides. Ancillary chunk sizes stay capped (8 MB).
    png_set_user_limits(h->png, 0x7fffffff, 0x7fffffff);
    png_set_read_fn(h->png, h, png_read_memory);
    png_read_info(h->png, h->info);
    png_uint_32 w, hh;
    int depth, ctype, interlace;
    png_get_IHDR(h->png, h->info, &w, &hh, &depth, &ctype, &interlace, NULL, NULL);
    h->width = w;
    h->height = hh;
    h->color_type = ctype;
    h->bit_depth = depth;
    info->width = w;
    info->height = hh;
    info->bit_depth = depth;
    info->color_type = ctype;
    info->interlaced = interlace != PNG_INTERLACE_NONE;
    info->has_trns = png_get_valid(h->png, h->info, PNG_INFO_tRNS) ? 1 : 0;
    return h;
}

int mtok_png_read(mtok_png *h, int want_trns_alpha, uint8_t *out, int *channels, mtok_img_result *result) {
    set_result(result, MTOK_IMG_OK, NULL);
    png_bytep *rows = NULL;
    png_colorp palette = NULL;
    int num_palette = 0;
    // `rows` is released on both paths; volatile keeps its value across the longjmp.
    png_bytep *volatile rows_owned = NULL;
    if (setjmp(png_jmpbuf(h->png))) {
        free(rows_owned);
        int st = png_failure_status(h);
        set_result(result, st, h->message);
        return st;
    }
    png_structp p = h->png;
    int manual_palette = 0;
    if (h->bit_depth == 16) png_set_strip_16(p); // high byte, as Pillow's ";16B" unpackers do
    if (h->color_type == PNG_COLOR_TYPE_PALETTE) {
        if (want_trns_alpha) {
            png_set_palette_to_rgb(p);
        } else {
            // libpng's palette expansion always turns tRNS into alpha; map indices here so a
            // transparent entry keeps its palette colour, as Pillow's convert("RGB") does.
            manual_palette = 1;
            if (h->bit_depth < 8) png_set_packing(p);
            png_get_PLTE(p, h->info, &palette, &num_palette);
        }
    } else {
        if (h->bit_depth < 8) png_set_expand_gray_1_2_4_to_8(p);
        if (want_trns_alpha && png_get_valid(p, h->info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(p);
    }
    png_set_interlace_handling(p);
    png_read_update_info(p, h->info);
    int ch = png_get_channels(p, h->info);
    size_t rowbytes = png_get_rowbytes(p, h->info);
    if (ch < 1 || ch > 4 || rowbytes != (size_t)h->width * (size_t)ch) {
        set_result(result, MTOK_IMG_UNSUPPORTED, "unexpected PNG row layout");
        return MTOK_IMG_UNSUPPORTED;
    }
    rows = malloc(sizeof(png_bytep) * (size_t)h->height);
    if (!rows) {
        set_result(result, MTOK_IMG_NO_MEMORY, "out of memory");
        return MTOK_IMG_NO_MEMORY;
    }
    rows_owned = rows;
    for (uint32_t y = 0; y < h->height; y++) rows[y] = out + (size_t)y * rowbytes;
    png_read_image(p, rows);
    rows_owned = NULL;
    free(rows);
    if (manual_palette) {
        // Expand in place from the end: index i moves to 3*i, which is never before i.
        size_t n = (size_t)h->width * h->height;
        for (size_t i = n; i-- > 0;) {
            int idx = out[i];
            uint8_t r = 0, g = 0, b = 0; // an index past the palette reads as black
            if (palette && idx < num_palette) {
                r = palette[idx].red;
                g = palette[idx].green;
                b = palette[idx].blue;
            }
            out[3 * i] = r;
            out[3 * i + 1] = g;
            out[3 * i + 2] = b;
        }
        ch = 3;
    }
    *channels = ch;
    return MTOK_IMG_OK;
}

void mtok_png_close(mtok_png *h) {
    if (!h) return;
    if (h->png) png_destroy_read_struct(&h->png, h->info ? &h->info : NULL, NULL);
    free(h);
}

int mtok_png_write_rgb(const char *path, const uint8_t *rgb, uint32_t width, uint32_t height,
                       mtok_img_result *result) {
    set_result(result, MTOK_IMG_OK, NULL);
    struct mtok_png ctx;
    memset(&ctx, 0, sizeof(ctx));
    FILE *volatile file = fopen(path, "wb");
    if (!file) {
        set_result(result, MTOK_IMG_CORRUPT, "cannot open output file");
        return MTOK_IMG_CORRUPT;
    }
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &ctx, png_error_jump, png_warning_quiet);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info) {
        if (png) png_destroy_write_struct(&png, NULL);
        fclose(file);
        set_result(result, MTOK_IMG_NO_MEMORY, "out of memory");
        return MTOK_IMG_NO_MEMORY;
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        fclose(file);
        set_result(result, MTOK_IMG_CORRUPT, ctx.message);
        return MTOK_IMG_CORRUPT;
    }
    png_init_io(png, file);
    png_set_IHDR(png, info, width, height, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (uint32_t y = 0; y < height; y++) png_write_row(png, (png_const_bytep)(rgb + (size_t)y * width * 3));
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    if (fclose(file) != 0) {
        set_result(result, MTOK_IMG_CORRUPT, "cannot write output file");
        return MTOK_IMG_CORRUPT;
    }
    return MTOK_IMG_OK;
}
