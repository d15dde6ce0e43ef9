import ArgumentParser
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
                let part: Manifest.Part?
                let arithmetic: [Manifest.ArithmeticSegment]?
                enum CodingKeys: String, CodingKey {
                    case path, formatVersion = "format_version", complete, records, shards, payloadBytes = "payload_bytes"
                    case compressedBytes = "compressed_bytes", bytesOnDisk = "bytes_on_disk", compressionRatio = "compression_ratio"
                    case contentDigest = "content_digest", settings, classes, part, arithmetic
                }
            }
            try printJSON(Info(path: cache, formatVersion: m.formatVersion, complete: m.complete, records: c.count,
                               shards: m.shards.count, payloadBytes: m.totals.payloadBytes,
                               compressedBytes: m.totals.compressedBytes, bytesOnDisk: m.totals.bytesOnDisk,
                               compressionRatio: ratio, contentDigest: m.contentDigest, settings: m.settings,
                               classes: m.classes?.count, part: m.part, arithmetic: m.arithmetic))
            return
        }
        print("cache           \(cache)")
        print("format          \(m.format) v\(m.formatVersion)\(m.complete ? "" : " (incomplete: writer not finished)")")
        print("records         \(c.count) in \(m.shards.count) shard(s), \(m.recordsPerChunk) per chunk")
        print("payload         \(formatBytes(m.totals.payloadBytes)) uncompressed")
        print("compressed      \(formatBytes(m.totals.compressedBytes)) (zstd level \(m.compression.level)\(m.compression.literals.map { ", \($0) literals" } ?? ""), ratio \(String(format: "%.2f", ratio)))")
        print("on disk         \(formatBytes(m.totals.bytesOnDisk)) (\(String(format: "%.3f", Double(m.totals.bytesOnDisk) / Double(max(1, m.totals.compressedBytes))))× compressed)")
        print("content digest  \(m.contentDigest ?? "(none until finished)")")
        if let classes = m.classes { print("classes         \(classes.count)") }
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
        print("settings        \(settingsLine(m.settings))")
    }

    /// The settings as compact JSON, cut after 100 KB (`--json` prints them whole).
    func settingsLine(_ v: JSONValue) -> String { v.compactText(limit: 100_000) }
}
