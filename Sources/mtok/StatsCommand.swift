import ArgumentParser
import Foundation
import ShardReader
import TensorFiles

struct StatsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stats",
        abstract: "Per-channel latent statistics, codebook usage, merge-group sizes and records per label, from the records.",
        discussion: """
        Reads every record in index order and sums in float64 in fixed blocks, so the figures \
        depend only on the records. To normalise latents per channel: (x - mean) / std.
        """)

    @Argument(help: "The cache directory.") var cache: String
    @Flag(help: "Print JSON (with the count of every code).") var json = false

    func run() throws {
        let c = try openCache(cache)
        let config = c.manifest.settings["model"]?["config"]
        let size: Int? = config?["quantizer"]?.stringValue == "vq" ? config?["codebook_size"]?.intValue
            : config?["z_channels"]?.intValue.flatMap { $0 <= 26 ? 1 << $0 : nil }
        let stats: CacheStatistics
        do { stats = try CacheStatistics.compute(c, codebookSize: size) } catch { throw fail("\(cache): \(error)") }
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
