import ArgumentParser
import Foundation
import TensorFiles
import ImageDecoding

/// `mtok preprocess`: one image through the same decode and crop the tokenize pipeline uses,
/// written as the 8-bit RGB the encoder sees (.png) or its float32 [3, R, R] input (.npy).
struct PreprocessCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "preprocess",
        abstract: "Decode, resize and crop one image as the tokenizer sees it.",
        discussion: """
            Views: 0 as is, 1 horizontal flip, 2...11 LlamaGen's ten-crop (top-left, top-right, \
            bottom-left, bottom-right, centre, then the same five of the mirrored image). \
            Exit status 1 with a one-line reason on stderr when the image cannot be used.
            """)

    @Argument(help: "A JPEG or PNG file (the format is read from its bytes).")
    var image: String

    @Option(help: "Side of the square output, in pixels.")
    var resolution: Int

    @Option(help: "adm (center_crop_arr of DiT/LlamaGen/MAR) or resize-center (torchvision).")
    var crop: String = CropMode.adm.rawValue

    @Option(help: "View number, 0...11.")
    var view: Int = 0

    @Option(help: "Ten-crop views first take the ADM crop at this multiple of the resolution (LlamaGen: 1.1 or 1.05).")
    var tenCropRange: Double = 1.1

    @Option(help: "Output file: .png (8-bit RGB) or .npy (float32 [3,R,R], x/127.5-1).")
    var out: String

    @OptionGroup var decode: DecodeFlags

    @Flag(help: "Fast path: DCT-domain downscaling of JPEGs (pixels differ slightly from the exact path).")
    var fast = false

    func validate() throws {
        guard resolution > 0 && resolution <= 16384 else { throw ValidationError("--resolution must be 1...16384") }
        guard CropMode(rawValue: crop) != nil else { throw ValidationError("--crop must be adm or resize-center") }
        guard View(number: view) != nil else { throw ValidationError("--view must be 0...11") }
        let ext = (out as NSString).pathExtension.lowercased()
        guard ext == "png" || ext == "npy" else { throw ValidationError("--out must end in .png or .npy") }
        guard tenCropRange >= 1 && tenCropRange <= 2 else { throw ValidationError("--ten-crop-range must be 1...2") }
    }

    func run() throws {
        var pre = Preprocessor(resolution: resolution, crop: CropMode(rawValue: crop) ?? .adm, decodeOptions: decode.options)
        pre.usesDCTScaling = fast
        pre.tenCropRange = tenCropRange
        do {
            let rgb = try pre.preprocessFile(atPath: image, view: View(number: view) ?? .identity)
            if (out as NSString).pathExtension.lowercased() == "png" {
                try PNGWriter.write(rgb, to: out)
            } else {
                try writeNPY(rgb.floatCHW(), shape: [3, rgb.height, rgb.width], to: out)
            }
            print("wrote \(out): \(rgb.width)×\(rgb.height) view \(view) of \(image)")
        } catch let error as ImageDecodingError {
            FileHandle.standardError.write(Data("mtok preprocess: \(error)\n".utf8))
            throw ExitCode(1)
        } catch {
            FileHandle.standardError.write(Data("mtok preprocess: cannot write \(out): \(describeFileError(error))\n".utf8))
            throw ExitCode(1)
        }
    }

    /// NPY format 1.0: magic, version, little-endian header length, a Python dict literal padded
    /// with spaces to a multiple of 64 bytes, then the raw little-endian float32 data.
    private func writeNPY(_ values: [Float], shape: [Int], to path: String) throws {
        let dims = shape.map(String.init).joined(separator: ", ")
        var header = "{'descr': '<f4', 'fortran_order': False, 'shape': (\(dims)), }"
        let unpadded = 10 + header.utf8.count + 1
        header += String(repeating: " ", count: (64 - unpadded % 64) % 64) + "\n"
        var data = Data([0x93] + Array("NUMPY".utf8) + [1, 0])
        let n = UInt16(header.utf8.count)
        data.append(contentsOf: [UInt8(n & 0xFF), UInt8(n >> 8)])
        data.append(contentsOf: Array(header.utf8))
        data.reserveCapacity(data.count + values.count * 4)
        for v in values {
            let bits = v.bitPattern.littleEndian
            withUnsafeBytes(of: bits) { data.append(contentsOf: $0) }
        }
        try data.write(to: URL(fileURLWithPath: path), options: .atomic)
    }
}
