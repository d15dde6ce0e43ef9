/// The encoder's result for one image.
public struct EncodedImage: Sendable, Equatable {
    /// `[K × z]` row-major: the pre-quantization z-vector per kept token, or the VAE mean.
    public var latents: [Float]
    /// `[K × z]` log-variance clamped to [−30, 20], present only with the VAE branch.
    public var logvar: [Float]?
    /// `[K]` LFQ or codebook indices, in final-token order.
    public var indices: [UInt32]
    /// `[N]` for each original patch token (raster order), the kept token it was merged into.
    public var groups: [UInt16]
    /// `[K]` how many patch tokens each kept token holds (the final token sizes).
    public var sizes: [Int]
}
