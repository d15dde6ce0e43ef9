// TensorCore: implemented by its own issue.
enum TensorCorePlaceholder {}
