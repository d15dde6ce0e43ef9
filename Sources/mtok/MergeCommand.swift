import ArgumentParser
import Foundation
import ShardReader
import ShardWriter

struct MergeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "merge",
        abstract: "Join the finished parts of a scaled-out tokenize run (CACHE/parts/rank-*) into one cache.")

    @Argument(help: "The cache directory given to every rank's --out.") var cache: String
    @Flag(help: "Wait until every rank's part is finished, then merge (for a merge step a scheduler starts early).") var wait = false
    @Option(help: "With --wait: give up after this many seconds (default: wait for good).") var timeout: Double?
    @Option(help: "With --wait: seconds between looks at the parts.") var poll: Double = 10

    func validate() throws {
        if !wait && timeout != nil { throw ValidationError("--timeout goes with --wait") }
        if poll <= 0 { throw ValidationError("--poll must be positive") }
    }

    func run() throws {
        if wait {
            let start = Date()
            var said: String?
            while let waiting = CacheMerger.waitingFor(root: cache),
                  !FileManager.default.fileExists(atPath: cache + "/manifest.json") {
                if let timeout, Date().timeIntervalSince(start) >= timeout {
                    throw fail("gave up after \(Int(timeout)) s: \(cache) is not ready to merge: \(waiting)")
                }
                if waiting != said {
                    FileHandle.standardError.write(Data("mtok merge: waiting: \(waiting)\n".utf8))
                    said = waiting
                }
                Thread.sleep(forTimeInterval: poll)
            }
        }
        do {
            let m = try CacheMerger.merge(root: cache)
            print("merged \(m.shards.count) shard(s), \(m.totals.records) records into \(cache)")
            print("content digest \(m.contentDigest ?? "-")")
            // The merged records in index order are a one-machine run's, and so are its statistics.
            do {
                try CacheStatistics.writeFile(forCache: cache)
                print("statistics \(cache)/\(CacheStatistics.fileName)")
            } catch {
                FileHandle.standardError.write(Data("mtok merge: note: merged, but the statistics could not be written: \(error); `mtok stats \(cache) --recompute --write` tries again\n".utf8))
            }
        } catch {
            throw fail("\(error)")
        }
    }
}
