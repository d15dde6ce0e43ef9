import Foundation
#if canImport(Glibc)
import Glibc
#endif
import TensorFiles

/// What a cache's records hold, in numbers users otherwise compute by hand: per-channel latent
/// statistics (to normalise latents for a diffusion model), codebook usage, merge-group sizes and
/// records per label.
///
/// Computed from the records in index order, in float64: each block of `blockSize` records is
/// summed on its own, and blocks are combined one after another (Chan et al.'s pairwise update),
/// so the figures depend only on the records, never on threads or on how the cache was written.
public struct CacheStatistics: Codable, Equatable, Sendable {
    /// The content digest of the records these figures describe: a stored `stats.json` counts
    /// only while it equals the manifest's.
    public var contentDigest: String?
    public var records: Int = 0
    public var latents: [Channel] = []
    /// Of the log-variance, for caches with a VAE head.
    public var logvar: [Channel]?
    public var codebook: Codebook?
    public var groups: Groups = Groups()
    /// Records per label, ascending by label (-1: no label).
    public var labels: [LabelCount] = []

    public struct Channel: Codable, Equatable, Sendable {
        public var count: Int = 0
        public var mean: Double = 0
        public var std: Double = 0
        public var min: Double = .infinity
        public var max: Double = -.infinity
        /// Sum of squared deviations from the mean (std = sqrt(m2 / count)); kept for combining.
        var m2: Double = 0
        enum CodingKeys: String, CodingKey { case count, mean, std, min, max }

        /// The figures, not the running sum behind them (a stored channel has none).
        public static func == (a: Channel, b: Channel) -> Bool {
            a.count == b.count && a.mean == b.mean && a.std == b.std && a.min == b.min && a.max == b.max
        }

        /// Adds a block summed separately (Chan et al.): exact in its order, the same every time.
        mutating func combine(count n: Int, mean m: Double, m2 s: Double, min lo: Double, max hi: Double) {
            guard n > 0 else { return }
            let total = count + n
            let delta = m - mean
            mean += delta * Double(n) / Double(total)
            m2 += s + delta * delta * Double(count) * Double(n) / Double(total)
            count = total
            min = Swift.min(min, lo)
            max = Swift.max(max, hi)
            std = (m2 / Double(count)).squareRoot()
        }
    }

    public struct Codebook: Codable, Equatable, Sendable {
        /// Codes in the codebook (VQ: its size; LFQ: 2^channels).
        public var size: Int
        public var used: Int
        /// exp(entropy of the code frequencies); equals `size` when every code is used equally.
        public var perplexity: Double
        /// The ten most used codes and the ten least used of those used, with their counts.
        public var mostUsed: [CodeCount]
        public var leastUsed: [CodeCount]
        /// Count per code (index = code).
        public var counts: [Int]
        enum CodingKeys: String, CodingKey { case size, used, perplexity, mostUsed = "most_used", leastUsed = "least_used", counts }
    }

    public struct CodeCount: Codable, Equatable, Sendable {
        public var code: Int
        public var count: Int
    }

    public struct Groups: Codable, Equatable, Sendable {
        /// Kept tokens per record (one merge group each) and patches per record.
        public var perRecord: Int = 0
        public var patches: Int = 0
        /// How many groups have each size (patches merged into one token): index = size.
        public var sizes: [Int] = []
        public var largest: Int = 0
        enum CodingKeys: String, CodingKey { case perRecord = "per_record", patches, sizes, largest }
    }

    public struct LabelCount: Codable, Equatable, Sendable {
        public var label: Int
        public var records: Int
    }

    public static let blockSize = 256
    /// Where a finished cache keeps its statistics (written by `mtok tokenize` and `mtok merge`).
    public static let fileName = "stats.json"
    /// A stats file larger than this is not read (2^26 codes of counts would be ~700 MB; real
    /// codebooks are ≤ 2^18).
    public static let maximumFileBytes = 64 << 20

    enum CodingKeys: String, CodingKey { case contentDigest = "content_digest", records, latents, logvar, codebook, groups, labels }

    /// The statistics stored with `cache`: nil when there is no `stats.json`; a `CacheError` when
    /// there is one that cannot be read, or that describes other records (another content digest).
    public static func stored(in cache: TokenCache) throws -> CacheStatistics? {
        let path = cache.root + "/" + fileName
        var st = stat()
        guard lstat(path, &st) == 0 else { return nil }
        guard st.st_mode & S_IFMT == S_IFREG else { throw CacheError(.notACache, "\(fileName) is not a regular file") }
        guard st.st_size <= maximumFileBytes else { throw CacheError(.notACache, "\(fileName) is \(st.st_size) bytes, more than the \(maximumFileBytes >> 20) MiB a stats file may be") }
        let stats: CacheStatistics
        do {
            stats = try JSONDecoder().decode(CacheStatistics.self, from: try Data(contentsOf: URL(fileURLWithPath: path)))
        } catch {
            throw CacheError(.notACache, "\(fileName) does not parse: \(error)")
        }
        guard stats.contentDigest != nil, stats.contentDigest == cache.manifest.contentDigest, stats.records == cache.count else {
            throw CacheError(.shardMismatch, "\(fileName) describes other records (content digest \(stats.contentDigest ?? "none"), the cache's is \(cache.manifest.contentDigest ?? "none")): `mtok stats CACHE --recompute --write` rewrites it")
        }
        return stats
    }

    /// The codebook size a cache's settings give (VQ: its size; LFQ: 2^channels), if they say.
    public static func codebookSize(settings: JSONValue) -> Int? {
        let config = settings["model"]?["config"]
        if config?["quantizer"]?.stringValue == "vq" { return config?["codebook_size"]?.intValue }
        return config?["z_channels"]?.intValue.flatMap { $0 <= 26 ? 1 << $0 : nil }
    }

    /// The JSON of `stats.json`: keys sorted, so the same figures give the same bytes.
    public func encoded() throws -> Data {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        return try e.encode(self)
    }

    /// Reads every record of `cache` in index order. `codebookSize`: from the cache's settings
    /// when known (else the largest index + 1).
    public static func compute(_ cache: TokenCache, codebookSize: Int? = nil) throws -> CacheStatistics {
        var stats = CacheStatistics()
        var codes: [Int] = []
        var labels: [Int: Int] = [:]
        var start = 0
        while start < cache.count {
            let end = Swift.min(cache.count, start + blockSize)
            let b = try cache.batch(Array(start..<end))
            if start == 0 {
                stats.latents = Array(repeating: Channel(), count: b.channels)
                if b.logvar != nil { stats.logvar = Array(repeating: Channel(), count: b.channels) }
                stats.groups.perRecord = b.tokens
                stats.groups.patches = b.patches
                codes = Array(repeating: 0, count: Swift.max(codebookSize ?? 0, 1))
            }
            Self.add(b.latents, channels: b.channels, to: &stats.latents)
            if let lv = b.logvar, stats.logvar != nil { Self.add(lv, channels: b.channels, to: &stats.logvar!) }
            for code in b.indices {
                let c = Int(code)
                if c >= codes.count {
                    // An index past the known size: grow (bounded by the 32-bit index, and only
                    // when the settings did not say; a stranger's cache is read, not trusted).
                    guard codebookSize == nil, c < 1 << 26 else {
                        throw CacheError(.badRecord, "VQ index \(c) is outside the codebook of \(codes.count)")
                    }
                    codes += Array(repeating: 0, count: c + 1 - codes.count)
                }
                codes[c] += 1
            }
            Self.addGroups(b.groups, patches: b.patches, tokens: b.tokens, to: &stats.groups)
            for l in b.labels { labels[Int(l), default: 0] += 1 }
            start = end
        }
        stats.records = cache.count
        stats.contentDigest = cache.manifest.contentDigest
        stats.labels = labels.keys.sorted().map { LabelCount(label: $0, records: labels[$0]!) }
        if !codes.isEmpty, cache.count > 0 { stats.codebook = Self.usage(codes) }
        return stats
    }

    /// One block's per-channel sums, then combined into `channels` in order.
    static func add(_ values: [Float], channels c: Int, to channels: inout [Channel]) {
        guard c > 0 else { return }
        let n = values.count / c
        guard n > 0 else { return }
        for ch in 0..<c {
            var sum = 0.0, lo = Double.infinity, hi = -Double.infinity
            var i = ch
            while i < values.count {
                let v = Double(values[i])
                sum += v
                lo = Swift.min(lo, v)
                hi = Swift.max(hi, v)
                i += c
            }
            let mean = sum / Double(n)
            var m2 = 0.0
            i = ch
            while i < values.count {
                let d = Double(values[i]) - mean
                m2 += d * d
                i += c
            }
            channels[ch].combine(count: n, mean: mean, m2: m2, min: lo, max: hi)
        }
    }

    static func addGroups(_ groups: [UInt16], patches: Int, tokens: Int, to out: inout Groups) {
        guard patches > 0, tokens > 0 else { return }
        var size = [Int](repeating: 0, count: tokens)
        var r = 0
        while r + patches <= groups.count {
            for i in 0..<tokens { size[i] = 0 }
            for p in r..<(r + patches) where Int(groups[p]) < tokens { size[Int(groups[p])] += 1 }
            for s in size where s > 0 {
                if s >= out.sizes.count { out.sizes += Array(repeating: 0, count: s + 1 - out.sizes.count) }
                out.sizes[s] += 1
                out.largest = Swift.max(out.largest, s)
            }
            r += patches
        }
    }

    static func usage(_ counts: [Int]) -> Codebook {
        let total = Double(counts.reduce(0, +))
        var entropy = 0.0
        for c in counts where c > 0 {
            let p = Double(c) / total
            entropy -= p * Foundation.log(p)
        }
        let used = counts.enumerated().filter { $0.element > 0 }.map { CodeCount(code: $0.offset, count: $0.element) }
        let byCount = used.sorted { $0.count != $1.count ? $0.count > $1.count : $0.code < $1.code }
        return Codebook(size: counts.count, used: used.count, perplexity: Foundation.exp(entropy),
                        mostUsed: Array(byCount.prefix(10)), leastUsed: Array(byCount.suffix(10).reversed()), counts: counts)
    }
}
