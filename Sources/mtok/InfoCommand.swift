import ArgumentParser
import EncoderModel
import Foundation
import ShardFormat
import ShardReader
import TensorFiles

struct InfoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "info", abstract: "Show a cache's format, settings, counts, sizes and content digest.")

    @Argument(help: "The cache directory.") var cache: String
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        let c = try openCache(cache)
        let m = c.manifest
        let ratio = m.totals.compressedBytes > 0 ? Double(m.totals.payloadBytes) / Double(m.totals.compressedBytes) : 0
        if json {
            struct Info: Encodable {
                let path: String
                let formatVersion: Int
                let complete: Bool
                let records: Int
                let shards: Int
                let payloadBytes: Int
                let compressedBytes: Int
                let bytesOnDisk: Int
                let compressionRatio: Double
                let contentDigest: String?
                let settings: JSONValue
                let classes: Int?
                let classNames: [String]?
                let failures: Int?
                let part: Manifest.Part?
                let arithmetic: [Manifest.ArithmeticSegment]?
                enum CodingKeys: String, CodingKey {
                    case path, formatVersion = "format_version", complete, records, shards, payloadBytes = "payload_bytes"
                    case compressedBytes = "compressed_bytes", bytesOnDisk = "bytes_on_disk", compressionRatio = "compression_ratio"
                    case contentDigest = "content_digest", settings, classes, classNames = "class_names", failures, part, arithmetic
                }
            }
            try printJSON(Info(path: cache, formatVersion: m.formatVersion, complete: m.complete, records: c.count,
                               shards: m.shards.count, payloadBytes: m.totals.payloadBytes,
                               compressedBytes: m.totals.compressedBytes, bytesOnDisk: m.totals.bytesOnDisk,
                               compressionRatio: ratio, contentDigest: m.contentDigest, settings: m.settings,
                               classes: m.classes?.count, classNames: m.classes, failures: Self.failureCount(cache),
                               part: m.part, arithmetic: m.arithmetic))
            return
        }
        print("cache           \(cache)")
        print("format          \(m.format) v\(m.formatVersion)\(m.complete ? "" : " (unfinished: the same mtok tokenize command resumes it)")")
        print("records         \(c.count) in \(m.shards.count) shard(s), \(m.recordsPerChunk) per chunk")
        print("payload         \(formatBytes(m.totals.payloadBytes)) uncompressed")
        print("compressed      \(formatBytes(m.totals.compressedBytes)) (zstd level \(m.compression.level)\(m.compression.literals.map { ", \($0) literals" } ?? ""), ratio \(String(format: "%.2f", ratio)))")
        print("on disk         \(formatBytes(m.totals.bytesOnDisk)) (\(String(format: "%.3f", Double(m.totals.bytesOnDisk) / Double(max(1, m.totals.compressedBytes))))× compressed)")
        print("content digest  \(m.contentDigest ?? "(none until finished)")")
        if let classes = m.classes {
            let shown = classes.prefix(12).joined(separator: ", ")
            print("classes         \(classes.count)\(classes.isEmpty ? "" : ": \(shown)\(classes.count > 12 ? ", … (mtok info --json lists all)" : "")")")
        }
        if let failures = Self.failureCount(cache) {
            print("failures        \(failures) input(s) could not be tokenized: \(cache)/failures.jsonl")
        }
        if let p = m.part { print("part            rank \(p.rank) of \(p.worldSize)") }
        if let line = arithmeticLine(m.arithmeticUse) {
            print("arithmetic      \(line)")
            if let problem = m.arithmeticProblem {
                print("                (the manifest's record of it is inconsistent: \(problem))")
            } else if m.arithmeticUse.count > 1 {
                let segments = (m.arithmetic ?? []).filter { $0.records > 0 }
                for s in segments.prefix(20) {
                    print("                records \(s.firstRecord)–\(s.firstRecord + s.records - 1)\(s.rank.map { " (rank \($0))" } ?? ""): \(s.madeBy.map { "\($0)" } ?? "unrecorded")")
                }
                if segments.count > 20 { print("                … \(segments.count - 20) more segments (mtok info --json lists them)") }
            }
        }
        if let lines = Self.readableSettings(m.settings) {
            lines.forEach { print($0) }
            print("settings        all of them: mtok info --json")
        } else {
            print("settings        \(m.settings.compactText(limit: 100_000))")
        }
    }

    /// The settings `mtok tokenize` writes, as lines for people; nil for other settings (a
    /// synthetic or Python-written cache), which are printed as JSON.
    static func readableSettings(_ s: JSONValue) -> [String]? {
        guard let model = s["model"], let pre = s["preprocessing"], let inputs = s["inputs"] else { return nil }
        func text(_ v: JSONValue?) -> String { v?.stringValue ?? v.map { $0.compactText(limit: 200) } ?? "?" }
        var metadata: [String: String] = [:]
        if case let .object(members)? = model["metadata"] {
            for (k, v) in members { if let sv = v.stringValue { metadata[k] = sv } }
        }
        let config = model["config"]
        let provenance = EncoderWeights.untrainedNote(metadata: metadata)
            ?? metadata["mtok.source"].map { "converted from \($0)\(metadata["mtok.weights"].map { " (\($0) weights)" } ?? "")" }
            ?? "weights of unrecorded origin"
        let views = (pre["views"].flatMap { v -> [String]? in
            guard case let .array(items) = v else { return nil }
            return items.map { item in ["0": "center", "1": "hflip"][item.compactText()] ?? "ten-crop \(item.compactText())" }
        } ?? []).joined(separator: ",")
        return [
            "model           \(provenance)",
            "                weights sha256 \(text(model["weights_sha256"]).prefix(16))…, resolution \(text(config?["resolution"])), z_channels \(text(config?["z_channels"])), merge_num \(text(config?["merge_num"])), quantizer \(text(config?["quantizer"]))\(config?["codebook_size"].map { " (\(text($0)) codes)" } ?? "")",
            "preprocessing   crop \(text(pre["crop"])), views \(views), \(text(pre["resolution"])) px, resample \(text(pre["resample"]))",
            "dtypes          latents \(text(s["latent_dtype"])), indices \(text(s["index_dtype"])), groups \(text(s["group_dtype"]))",
            "inputs          \(text(inputs["count"])) (\(text(inputs["kind"])); fingerprint \(text(inputs["fingerprint"]).prefix(16))…)\(appended(s["appends"]))",
        ]
    }

    /// ", then N added by K appends" for a grown cache (`mtok tokenize --append`).
    static func appended(_ appends: JSONValue?) -> String {
        guard case let .array(items)? = appends, !items.isEmpty else { return "" }
        let added = items.reduce(0) { $0 + ($1["count"]?.intValue ?? 0) }
        return ", then \(added) added by \(items.count) append\(items.count == 1 ? "" : "s")"
    }

    /// Lines in `CACHE/failures.jsonl`, nil when there is none. The file may come from a
    /// stranger: only a regular file (not a link to a device) is read, at most its size, in pieces.
    static func failureCount(_ cache: String) -> Int? {
        let path = cache + "/failures.jsonl"
        guard let attributes = try? FileManager.default.attributesOfItem(atPath: path),  // lstat: links are not followed
              attributes[.type] as? FileAttributeType == .typeRegular,
              var left = (attributes[.size] as? NSNumber)?.intValue,
              let h = FileHandle(forReadingAtPath: path) else { return nil }
        defer { try? h.close() }
        var lines = 0
        while left > 0, let chunk = try? h.read(upToCount: min(left, 1 << 20)), !chunk.isEmpty {
            lines += chunk.reduce(0) { $0 + ($1 == 0x0A ? 1 : 0) }
            left -= chunk.count
        }
        return lines
    }
}
