import ArgumentParser
import Foundation
import ShardFormat
import ShardReader
import TensorFiles

struct GetCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "get", abstract: "Print or save one record, by id (and view) or by index.")

    @Argument(help: "The cache directory.") var cache: String
    @Argument(help: "The record's id (omit with --index).") var id: String?
    @Option(help: "The view (0 = as is, 1 = flipped, 2... = crops).") var view = 0
    @Option(help: "Global record index instead of an id.") var index: Int?
    @Flag(help: "Print the record as JSON, arrays included.") var json = false
    @Option(help: "Save to FILE: .safetensors (the stored payload), .npz or .json.") var out: String?

    func validate() throws {
        guard (id == nil) != (index == nil) else { throw ValidationError("give either an ID or --index") }
        if let out, ![".safetensors", ".npz", ".json"].contains(where: { out.hasSuffix($0) }) {
            throw ValidationError("--out must end in .safetensors, .npz or .json")
        }
    }

    func run() throws {
        let c = try openCache(cache)
        let i: Int
        do {
            if let index {
                guard index >= 0, index < c.count else { throw fail("index \(index) not in 0..<\(c.count)") }
                i = index
            } else if let found = try c.index(of: id!, view: view) {
                i = found
            } else {
                throw fail("no record with id \(id!) and view \(view) in \(cache)")
            }
        } catch let e as ExitCode {
            throw e
        } catch {
            throw fail("\(error)")
        }
        let payload: [UInt8]
        let r: TokenRecord
        do {
            payload = try c.payload(at: i)
            r = try c.record(at: i)  // (decoded again, so that a bad record's error names its place)
            if let id { try TokenCache.checkLookup(r, id: id, view: view, index: i) }
        } catch {
            throw fail("\(error)")
        }
        if let out {
            let bytes: [UInt8]
            if out.hasSuffix(".safetensors") {
                bytes = payload
            } else if out.hasSuffix(".npz") {
                bytes = NumpyFiles.npz(Self.arrays(r))
            } else {
                bytes = Array(try Self.jsonData(r, index: i))
            }
            try writeOutput(bytes, to: out)
            print("wrote record \(i) (\(printableId(r.id)), view \(r.view)) to \(out)")
            return
        }
        if json {
            print(String(decoding: try Self.jsonData(r, index: i), as: UTF8.self))
            return
        }
        let lat = r.latentsAsFloat()
        let idx = r.indicesAsUInt32()
        let groups = r.groupsAsUInt32()
        var sizes = [Int](repeating: 0, count: r.tokenCount)
        for g in groups { sizes[Int(g)] += 1 }
        let mean = lat.reduce(0, +) / Float(max(1, lat.count))
        let std = (lat.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Float(max(1, lat.count))).squareRoot()
        print("index      \(i)")
        print("id         \(printableId(r.id))  view \(r.view)  label \(r.label)")
        print("source     \(r.sourceWidth)×\(r.sourceHeight), crop x=\(r.cropBox.x) y=\(r.cropBox.y) \(r.cropBox.width)×\(r.cropBox.height), sha256 \(r.sourceSHA256.isEmpty ? "-" : r.sourceSHA256)")
        print("latents    \(r.latents.dtype.rawValue) \(r.latents.shape)  mean \(String(format: "%.4f", mean)) std \(String(format: "%.4f", std))")
        if let lv = r.logvar { print("logvar     \(lv.dtype.rawValue) \(lv.shape)") }
        print("indices    \(r.indices.dtype.rawValue) \(r.indices.shape)  first \(idx.prefix(8).map(String.init).joined(separator: " "))  distinct \(Set(idx).count)")
        print("groups     \(r.groups.dtype.rawValue) \(r.groups.shape)  sizes min \(sizes.min() ?? 0) max \(sizes.max() ?? 0)")
    }

    /// Arrays for .npz: latents and logvar as float32 (NumPy has no bfloat16), the rest as stored.
    static func arrays(_ r: TokenRecord) -> [NamedTensor] {
        var out = [NamedTensor(name: "latents", dtype: .f32, shape: r.latents.shape,
                               bytes: FloatConversion.encode(r.latentsAsFloat(), as: .f32))]
        if let lv = r.logvarAsFloat() {
            out.append(NamedTensor(name: "logvar", dtype: .f32, shape: r.latents.shape, bytes: FloatConversion.encode(lv, as: .f32)))
        }
        out.append(r.indices)
        out.append(r.groups)
        return out
    }

    static func jsonData(_ r: TokenRecord, index: Int) throws -> Data {
        struct Out: Encodable {
            let index: Int
            let id: String
            let view: Int
            let label: Int
            let source_size: [Int]
            let crop_box: [Int]
            let source_sha256: String
            let latents_dtype: String
            let latents: [[Float]]
            let logvar: [[Float]]?
            let indices: [UInt32]
            let groups: [UInt32]
        }
        let c = r.channelCount
        func rows(_ v: [Float]) -> [[Float]] { stride(from: 0, to: v.count, by: c).map { Array(v[$0..<($0 + c)]) } }
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return try e.encode(Out(index: index, id: r.id, view: r.view, label: r.label,
                                source_size: [r.sourceWidth, r.sourceHeight],
                                crop_box: [r.cropBox.x, r.cropBox.y, r.cropBox.width, r.cropBox.height],
                                source_sha256: r.sourceSHA256, latents_dtype: r.latents.dtype.rawValue,
                                latents: rows(r.latentsAsFloat()), logvar: r.logvarAsFloat().map(rows),
                                indices: r.indicesAsUInt32(), groups: r.groupsAsUInt32()))
    }
}
