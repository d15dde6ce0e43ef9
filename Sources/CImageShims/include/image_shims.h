#ifndef MTOK_IMAGE_SHIMS_H
#define MTOK_IMAGE_SHIMS_H
// Placeholder: the JPEG/PNG shims (the only home of setjmp) are added with the image module.
int mtok_image_shims_version(void);
#endif
