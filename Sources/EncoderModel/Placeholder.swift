// EncoderModel: implemented by its own issue.
enum EncoderModelPlaceholder {}
