/// An 8-bit RGB image, rows top to bottom, pixels interleaved (R, G, B).
///
/// A plain value type: copies are independent and it is safe to pass between threads.
public struct RGBImage: Sendable, Equatable {
    public var width: Int
    public var height: Int
    /// `width * height * 3` bytes.
    public var pixels: [UInt8]

    public init(width: Int, height: Int, pixels: [UInt8]) {
        precondition(width >= 0 && height >= 0 && pixels.count == width * height * 3,
                     "RGBImage: \(pixels.count) bytes for \(width)x\(height)")
        self.width = width
        self.height = height
        self.pixels = pixels
    }

    /// The pixel at column `x`, row `y` as (r, g, b).
    public subscript(x: Int, y: Int) -> (UInt8, UInt8, UInt8) {
        let i = (y * width + x) * 3
        return (pixels[i], pixels[i + 1], pixels[i + 2])
    }

    /// The sub-rectangle starting at (`x`, `y`). The rectangle must lie inside the image.
    public func cropped(x: Int, y: Int, width w: Int, height h: Int) -> RGBImage {
        precondition(x >= 0 && y >= 0 && w >= 0 && h >= 0 && x + w <= width && y + h <= height,
                     "crop \(x),\(y) \(w)x\(h) outside \(width)x\(height)")
        var out = [UInt8](repeating: 0, count: w * h * 3)
        pixels.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                for row in 0..<h {
                    let s = ((y + row) * width + x) * 3
                    let d = row * w * 3
                    for i in 0..<(w * 3) { dst[d + i] = src[s + i] }
                }
            }
        }
        return RGBImage(width: w, height: h, pixels: out)
    }

    /// The mirror image left to right (torchvision `hflip`, `torch.flip(x, dims=[-1])`).
    public func flippedHorizontally() -> RGBImage {
        var out = pixels
        let w = width
        pixels.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                for row in 0..<height {
                    let base = row * w * 3
                    for x in 0..<w {
                        let s = base + x * 3
                        let d = base + (w - 1 - x) * 3
                        dst[d] = src[s]
                        dst[d + 1] = src[s + 1]
                        dst[d + 2] = src[s + 2]
                    }
                }
            }
        }
        return RGBImage(width: width, height: height, pixels: out)
    }

    /// Float32 planes in channel-major order (C, H, W), each value `x / 127.5 - 1`, in [-1, 1].
    ///
    /// This is what `ToTensor()` followed by `Normalize(0.5, 0.5)` feeds a tokenizer.
    public func floatCHW() -> [Float] {
        let plane = width * height
        // Every element is written below: no zero fill.
        return [Float](unsafeUninitializedCapacity: plane * 3) { dst, initialized in
            pixels.withUnsafeBufferPointer { src in
                Self.normalized.withUnsafeBufferPointer { table in
                    for i in 0..<plane {
                        dst[i] = table[Int(src[i * 3])]
                        dst[plane + i] = table[Int(src[i * 3 + 1])]
                        dst[2 * plane + i] = table[Int(src[i * 3 + 2])]
                    }
                }
            }
            initialized = plane * 3
        }
    }

    /// `x / 127.5 - 1` for every byte value, computed by the same expression once.
    private static let normalized: [Float] = (0..<256).map { Float($0) / 127.5 - 1 }
}
