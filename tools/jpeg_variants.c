/* Writes JPEG variants Pillow cannot make (4:4:0 and 4:1:1 sampling, YCCK, RGB colour space,
 * restart markers) from raw interleaved samples, for tools/image_fixtures.py.
 *
 * usage: jpeg_variants IN.raw WIDTH HEIGHT COMPONENTS OUT.jpg [options]
 *   --space ycc|rgb|gray|cmyk|ycck   stored colour space (default ycc; 4-component input for cmyk/ycck)
 *   --sample HxV                      sampling factors of the first component (default 2x2)
 *   --progressive                     progressive scans
 *   --restart N                       a restart marker every N MCUs
 *   --quality Q                       1..100 (default 90)
 * Build: cc -O2 tools/jpeg_variants.c -ljpeg -o jpeg_variants
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jpeglib.h>

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: %s IN.raw W H COMPONENTS OUT.jpg [options]\n", argv[0]);
        return 2;
    }
    int w = atoi(argv[2]), h = atoi(argv[3]), comps = atoi(argv[4]);
    const char *space = "ycc";
    int hs = 2, vs = 2, progressive = 0, restart = 0, quality = 90;
    for (int i = 6; i < argc; i++) {
        if (!strcmp(argv[i], "--space") && i + 1 < argc) space = argv[++i];
        else if (!strcmp(argv[i], "--sample") && i + 1 < argc) sscanf(argv[++i], "%dx%d", &hs, &vs);
        else if (!strcmp(argv[i], "--progressive")) progressive = 1;
        else if (!strcmp(argv[i], "--restart") && i + 1 < argc) restart = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--quality") && i + 1 < argc) quality = atoi(argv[++i]);
        else { fprintf(stderr, "unknown option %s\n", argv[i]); return 2; }
    }
    size_t n = (size_t)w * h * comps;
    unsigned char *buf = malloc(n);
    FILE *in = fopen(argv[1], "rb");
    if (!buf || !in || fread(buf, 1, n, in) != n) { fprintf(stderr, "cannot read input\n"); return 1; }
    fclose(in);
    FILE *out = fopen(argv[5], "wb");
    if (!out) { fprintf(stderr, "cannot open output\n"); return 1; }

    struct jpeg_compress_struct c;
    struct jpeg_error_mgr err;
    c.err = jpeg_std_error(&err);
    jpeg_create_compress(&c);
    jpeg_stdio_dest(&c, out);
    c.image_width = w;
    c.image_height = h;
    c.input_components = comps;
    c.in_color_space = comps == 1 ? JCS_GRAYSCALE : comps == 3 ? JCS_RGB : JCS_CMYK;
    jpeg_set_defaults(&c);
    if (!strcmp(space, "rgb")) jpeg_set_colorspace(&c, JCS_RGB);
    else if (!strcmp(space, "gray")) jpeg_set_colorspace(&c, JCS_GRAYSCALE);
    else if (!strcmp(space, "cmyk")) jpeg_set_colorspace(&c, JCS_CMYK);
    else if (!strcmp(space, "ycck")) jpeg_set_colorspace(&c, JCS_YCCK);
    else jpeg_set_colorspace(&c, JCS_YCbCr);
    jpeg_set_quality(&c, quality, TRUE);
    c.comp_info[0].h_samp_factor = hs;
    c.comp_info[0].v_samp_factor = vs;
    for (int i = 1; i < c.num_components; i++) {
        c.comp_info[i].h_samp_factor = 1;
        c.comp_info[i].v_samp_factor = 1;
    }
    if (!strcmp(space, "ycck") || !strcmp(space, "cmyk")) {
        /* K (the fourth component) at full resolution too, as Photoshop writes it. */
        c.comp_info[3].h_samp_factor = hs;
        c.comp_info[3].v_samp_factor = vs;
    }
    c.restart_interval = restart;
    if (progressive) jpeg_simple_progression(&c);
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = buf + (size_t)c.next_scanline * w * comps;
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    fclose(out);
    free(buf);
    return 0;
}
