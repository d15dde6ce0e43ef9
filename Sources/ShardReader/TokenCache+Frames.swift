import ShardFormat
internal import ZstdCore

extension TokenCache {
    /// Decompresses the stored frames of `indices` (verifying their checksums) and discards the
    /// bytes; returns the total decompressed size. This is the floor under any reader of the same
    /// records: the raw zstd rate that `mtok stream --decompress-only` and tools/bench_readers.py
    /// compare the stream against. Runs on the calling thread.
    public func decompressFrames(_ indices: [Int]) throws -> Int {
        let decompressor = ZstdDecompressor()
        var total = 0
        for index in indices {
            let (s, local) = try locate(index)
            total += try shards[s].withFrame(local: local, globalIndex: index) { frame in
                try decompressor.withDecompressed(frame, maxSize: RecordCodec.maxPayloadBytes) { $0.count }
            }
        }
        return total
    }
}
