enum ZstdCorePlaceholder {}
