#include "image_shims.h"
int mtok_image_shims_version(void) { return 1; }
