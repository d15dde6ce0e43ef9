import Foundation
import ShardFormat
public import ShardReader

extension CacheStatistics {
    /// Computes the statistics of the finished cache at `root` from its records (one read pass)
    /// and stores them as `stats.json`, tied to the cache's content digest.
    @discardableResult
    public static func writeFile(forCache root: String) throws -> CacheStatistics {
        let cache = try TokenCache(path: root)
        let stats = try compute(cache, codebookSize: codebookSize(settings: cache.manifest.settings))
        let path = root + "/" + fileName
        try OwnFiles.checkFile(path)
        try AtomicFile.write(try stats.encoded(), to: path)
        return stats
    }
}
