// ImageDecoding: implemented by its own issue.
enum ImageDecodingPlaceholder {}
