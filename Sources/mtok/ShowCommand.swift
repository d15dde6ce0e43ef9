import ArgumentParser
import Foundation
import ImageDecoding
import ShardFormat
import ShardReader
import TensorFiles
import TokenizePipeline

/// `mtok show`: a record's merge groups drawn over the crop it was encoded from.
struct ShowCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show",
        abstract: "Draw a record's merge groups over its cropped image, beside the token-size map (PNG).",
        discussion: """
        The crop is re-made from the source file with the cache's preprocessing and the record's \
        view; the source must be the file that was tokenized (its SHA-256 is checked). Left: each \
        merge group of two or more patches a colour over the photo (a token of one patch leaves \
        the photo as is), boundaries between groups in black. Right: each patch shaded by the size \
        of its group (dark: a token of one patch; light: the largest group).
        """)

    @Argument(help: "The cache directory.") var cache: String
    @Argument(help: "The record's id.") var id: String
    @Option(help: "The record's view.") var view = 0
    @Option(help: "The dataset root the ids are relative to (an ImageFolder or flat folder input).") var images: String?
    @Option(help: "The source file itself (for caches made from lists whose ids are not paths).") var image: String?
    @Option(help: "Output .png.") var out: String
    @Option(help: "Width of each of the two panels in pixels (default: the resolution, at least 512).") var size: Int?

    func validate() throws {
        guard (images == nil) != (image == nil) else { throw ValidationError("give --images ROOT or --image FILE") }
        guard out.lowercased().hasSuffix(".png") else { throw ValidationError("--out must end in .png") }
        if let size, !(16...8192).contains(size) { throw ValidationError("--size must be 16...8192") }
    }

    func run() throws {
        let c = try openCache(cache)
        guard let record = try c.record(id: id, view: view) else {
            throw fail("\(cache) has no record \(JSONValue.quoted(id)) view \(view)")
        }
        let picture: RGBImage
        do {
            picture = try Self.picture(of: record, in: c, source: image ?? (images! + "/" + id), panel: size)
        } catch let e as Problem {
            throw fail(e.message)
        }
        do { try PNGWriter.write(picture, to: out) } catch { throw fail("\(error)") }
        let groups = Self.groupMap(record.groups)
        var sizes = [Int: Int]()
        for g in groups { sizes[g, default: 0] += 1 }
        print("wrote \(out): \(id) view \(view), \(sizes.count) merge groups over \(groups.count) patches, largest \(sizes.values.max() ?? 0) patches")
    }

    struct Problem: Error { let message: String }

    /// The two panels for `record`; `source` nil draws the groups over gray (no photo at hand).
    static func picture(of record: TokenRecord, in c: TokenCache, source: String?, panel: Int? = nil) throws -> RGBImage {
        let pre = c.manifest.settings["preprocessing"]
        guard let resolution = pre?["resolution"]?.intValue, resolution > 0, resolution <= 16384 else {
            throw Problem(message: "\(c.root) does not record its preprocessing (resolution, crop): it was not made by mtok tokenize")
        }
        let groups = groupMap(record.groups)
        let side = Int(Double(groups.count).squareRoot())
        guard side * side == groups.count, side > 0, groups.allSatisfy({ $0 < groups.count }) else {
            throw Problem(message: "record \(record.id): \(groups.count) patches do not make a square grid")
        }
        let crop = try source.map { try remadeCrop(of: record, settings: pre, resolution: resolution, source: $0) }
            ?? RGBImage(width: resolution, height: resolution, pixels: [UInt8](repeating: 160, count: resolution * resolution * 3))
        return draw(crop, groups: groups, side: side, panel: panel ?? max(resolution, 512))
    }

    /// The crop the record was encoded from, re-made from `source` with the cache's preprocessing;
    /// refused when the file is not the one tokenized or the crop box comes out otherwise.
    static func remadeCrop(of record: TokenRecord, settings pre: JSONValue?, resolution: Int, source: String) throws -> RGBImage {
        guard FileManager.default.fileExists(atPath: source) else {
            throw Problem(message: "the source of \(record.id) is not at \(source): give the dataset root the cache was made from (--images) or the file (--image)")
        }
        let (sha, _) = try CacheVerifier.sha256(ofFile: source)
        if !record.sourceSHA256.isEmpty && sha != record.sourceSHA256 {
            throw Problem(message: "\(source) changed since it was tokenized (SHA-256 \(sha.prefix(16))…, the record has \(record.sourceSHA256.prefix(16))…): the picture would not be of these tokens")
        }
        guard let crop = pre?["crop"]?.stringValue.flatMap(CropMode.init(rawValue:)), let v = View(number: record.view) else {
            throw Problem(message: "the cache does not record its crop, or the record's view \(record.view) is unknown")
        }
        let options = TokenizeJob.decodeOptions(fromSettings: pre)
        let made: PreprocessedImage
        do {
            made = try Preprocessor(resolution: resolution, crop: crop, decodeOptions: options)
                .preprocessDetailed(bytes: [UInt8](try Data(contentsOf: URL(fileURLWithPath: source))), path: source, view: v)
        } catch {
            throw Problem(message: "\(source): \(error)")
        }
        let box = CropBox(x: Int(made.cropX.rounded()), y: Int(made.cropY.rounded()),
                          width: Int(made.cropWidth.rounded()), height: Int(made.cropHeight.rounded()))
        guard box == record.cropBox else {
            throw Problem(message: "re-making the crop of \(record.id) gives the box \(box), the record has \(record.cropBox): other preprocessing than the cache's")
        }
        return made.image
    }

    /// The record's patch → group map (raster order), whatever its integer dtype.
    static func groupMap(_ t: NamedTensor) -> [Int] {
        t.bytes.withUnsafeBytes { raw in
            switch t.dtype {
            case .u8: return raw.map { Int($0) }
            default: return (0..<(raw.count / 2)).map { Int(raw.loadUnaligned(fromByteOffset: 2 * $0, as: UInt16.self).littleEndian) }
            }
        }
    }

    /// A group's colour: hues spaced by the golden ratio, so neighbouring group numbers differ.
    static func colour(_ group: Int) -> (Double, Double, Double) {
        let h = (Double(group) * 0.618_033_988_75).truncatingRemainder(dividingBy: 1) * 6
        let s = 0.7, v = 0.95
        let f = h - h.rounded(.down), p = v * (1 - s), q = v * (1 - s * f), t = v * (1 - s * (1 - f))
        switch Int(h) % 6 {
        case 0: return (v, t, p)
        case 1: return (q, v, p)
        case 2: return (p, v, t)
        case 3: return (p, q, v)
        case 4: return (t, p, v)
        default: return (v, p, q)
        }
    }

    /// Two `panel`-wide squares side by side with an 8-pixel white gap: the crop tinted by merged
    /// group with group boundaries in black, and each patch shaded by its group's size
    /// (40 + 215 · (size − 1) / (largest − 1)).
    static func draw(_ img: RGBImage, groups: [Int], side: Int, panel: Int) -> RGBImage {
        let gap = 8, width = 2 * panel + gap
        var px = [UInt8](repeating: 255, count: width * panel * 3)
        var sizes = [Int](repeating: 0, count: (groups.max() ?? 0) + 1)
        for g in groups { sizes[g] += 1 }
        let largest = Double(max(1, sizes.max() ?? 1))
        func patch(_ x: Int, _ y: Int) -> Int { (y * side / panel) * side + x * side / panel }
        for y in 0..<panel {
            for x in 0..<panel {
                let p = patch(x, y), g = groups[p]
                // A boundary: the pixel to the right or below lies in another group's patch.
                let edge = (x + 1 < panel && groups[patch(x + 1, y)] != g) || (y + 1 < panel && groups[patch(x, y + 1)] != g)
                let (r, gr, b) = img[x * img.width / panel, y * img.height / panel]
                let (cr, cg, cb) = colour(g)
                let left = (y * width + x) * 3
                if edge {
                    px[left] = 0; px[left + 1] = 0; px[left + 2] = 0
                } else if sizes[g] == 1 {
                    px[left] = r; px[left + 1] = gr; px[left + 2] = b  // a token of one patch: the photo as is
                } else {
                    px[left] = UInt8(0.45 * Double(r) + 0.55 * 255 * cr)
                    px[left + 1] = UInt8(0.45 * Double(gr) + 0.55 * 255 * cg)
                    px[left + 2] = UInt8(0.45 * Double(b) + 0.55 * 255 * cb)
                }
                let level = edge ? 0 : UInt8(40 + 215 * (Double(sizes[g] - 1) / max(1, largest - 1)))
                let right = (y * width + panel + gap + x) * 3
                px[right] = level; px[right + 1] = level; px[right + 2] = level
            }
        }
        return RGBImage(width: width, height: panel, pixels: px)
    }
}
