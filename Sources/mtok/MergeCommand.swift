import ArgumentParser
import Foundation
import ShardWriter

struct MergeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "merge",
        abstract: "Join the finished parts of a scaled-out tokenize run (CACHE/parts/rank-*) into one cache.")

    @Argument(help: "The cache directory given to every rank's --out.") var cache: String

    func run() throws {
        do {
            let m = try CacheMerger.merge(root: cache)
            print("merged \(m.shards.count) shard(s), \(m.totals.records) records into \(cache)")
            print("content digest \(m.contentDigest ?? "-")")
        } catch {
            throw fail("\(error)")
        }
    }
}
