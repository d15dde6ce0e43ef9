import ArgumentParser
import Foundation
import ShardReader
import ShardWriter
import TensorFiles

struct StatsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stats",
        abstract: "Per-channel latent statistics, codebook usage, merge-group sizes and records per label, from the records.",
        discussion: """
        A finished cache keeps them in stats.json (written by tokenize and merge, tied to the \
        content digest, checked by verify); without one they are computed from the records: read \
        in index order and summed in float64 in fixed blocks, so the figures depend only on the \
        records. To normalise latents per channel: (x - mean) / std.
        """)

    @Argument(help: "The cache directory.") var cache: String
    @Flag(help: "Print JSON (with the count of every code).") var json = false
    @Flag(help: "Compute from the records even when stats.json is there.") var recompute = false
    @Flag(help: "Store what was computed as the cache's stats.json (a finished cache made without one).") var write = false

    func run() throws {
        let c = try openCache(cache)
        var stats: CacheStatistics?
        if !recompute {
            do { stats = try CacheStatistics.stored(in: c) } catch { throw fail("\(cache): \(error)") }
        }
        if stats == nil {
            if !recompute && !json {
                FileHandle.standardError.write(Data("mtok stats: \(cache) has no \(CacheStatistics.fileName); computing from the records\n".utf8))
            }
            do {
                stats = write ? try CacheStatistics.writeFile(forCache: cache)
                    : try CacheStatistics.compute(c, codebookSize: CacheStatistics.codebookSize(settings: c.manifest.settings))
            } catch { throw fail("\(cache): \(error)") }
        }
        guard let stats else { return }
        if json {
            try printJSON(stats)
            return
        }
        func f(_ v: Double) -> String { String(format: "%9.4f", v) }
        print("records   \(stats.records)")
        for (name, channels) in [("latents", stats.latents), ("logvar", stats.logvar ?? [])] where !channels.isEmpty {
            print("\(name) per channel (\(channels.first?.count ?? 0) values each)")
            print("  channel      mean       std       min       max")
            for (i, ch) in channels.enumerated() {
                print("  \(String(format: "%7d", i)) \(f(ch.mean)) \(f(ch.std)) \(f(ch.min)) \(f(ch.max))")
            }
        }
        if let cb = stats.codebook {
            let share = 100 * Double(cb.used) / Double(max(1, cb.size))
            print("codebook  \(cb.used) of \(cb.size) codes used (\(String(format: "%.1f", share)) %), perplexity \(String(format: "%.1f", cb.perplexity))")
            print("  most used   " + cb.mostUsed.map { "\($0.code) (\($0.count))" }.joined(separator: ", "))
            print("  least used  " + cb.leastUsed.map { "\($0.code) (\($0.count))" }.joined(separator: ", "))
        }
        let g = stats.groups
        let sizes = g.sizes.enumerated().filter { $0.element > 0 }.map { "\($0.offset): \($0.element)" }
        print("groups    \(g.perRecord) per record over \(g.patches) patches; groups by size \(sizes.prefix(16).joined(separator: ", "))\(sizes.count > 16 ? ", …" : ""); largest \(g.largest)")
        let labels = stats.labels.map { "\($0.label): \($0.records)" }
        print("labels    \(labels.prefix(20).joined(separator: ", "))\(labels.count > 20 ? ", … (\(labels.count) labels; --json lists all)" : "")")
    }
}
