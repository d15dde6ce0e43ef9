import Crypto
import Foundation
#if canImport(Glibc)
import Glibc
#endif
public import ShardFormat
import ShardReader

/// Joins the parts of a scaled-out run (`CACHE/parts/rank-NNNNN`, each a finished cache) into one
/// cache at `CACHE`, moving shard files instead of copying record bytes.
///
/// Every part must be complete, made with the same settings and layout, and the ranks must be
/// exactly 0..<world size. (id, view) pairs must be unique across parts. The plan is written to
/// `merge-plan.json` before any file moves, so a merge that dies half-way finishes when run again.
public enum CacheMerger {
    public static let partsDirectory = "parts"
    /// The merge's `flock`: several ranks may try to merge as they finish. The lock dies with its
    /// process; the file stays, and ranks that start or resume later ignore it.
    public static let lockFile = ".merge.lock"
    static let planFile = "merge-plan.json"

    /// The directory of rank `rank`'s part inside `root`.
    public static func partPath(root: String, rank: Int) -> String {
        root + "/" + partsDirectory + "/" + String(format: "rank-%05d", rank)
    }

    struct Plan: Codable {
        var moves: [[String]]  // [from, to], paths relative to the cache root
        var manifest: Manifest
    }

    /// Merges the parts under `root`; returns the merged manifest.
    @discardableResult
    public static func merge(root: String) throws -> Manifest {
        let fm = FileManager.default
        var isDirectory: ObjCBool = false
        guard fm.fileExists(atPath: root, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw CacheError(.notACache, "\(root) is not a directory")
        }
        // Several ranks may try to merge as they finish; one merges, the others are told so.
        let lockFD = try OwnFiles.open(root + "/" + lockFile, O_RDWR | O_CREAT)
        defer { close(lockFD) }
        guard flock(lockFD, LOCK_EX | LOCK_NB) == 0 else { throw CacheError(.busy, "another process is merging \(root)") }
        let planPath = root + "/" + planFile
        let plan: Plan
        if let data = try OwnFiles.contents(planPath) {
            plan = try JSONDecoder().decode(Plan.self, from: data)
        } else {
            plan = try makePlan(root: root)
            try AtomicFile.write(try JSONEncoder().encode(plan), to: planPath)
        }
        try OwnFiles.makeDirectory(root + "/shards")
        // The crash tests SIGKILL a merge between two moves; nothing else sets this.
        let killAfter = ProcessInfo.processInfo.environment["MTOK_TEST_KILL_MERGE_AFTER_MOVES"].flatMap { Int($0) }
        for (done, move) in plan.moves.enumerated() {
            if done == killAfter { kill(getpid(), SIGKILL) }
            let from = root + "/" + move[0], to = root + "/" + move[1]
            if fm.fileExists(atPath: from) {
                if fm.fileExists(atPath: to) { try fm.removeItem(atPath: to) }
                try fm.moveItem(atPath: from, toPath: to)
            } else if !fm.fileExists(atPath: to) {
                throw CacheError(.missingShard, "\(move[0]) is gone and \(move[1]) does not exist")
            }
        }
        AtomicFile.syncDirectory(of: root + "/shards/x")
        try plan.manifest.write(toCache: root)
        // Failures of every part, in rank order.
        var failures = Data()
        let parts = (try? fm.contentsOfDirectory(atPath: root + "/" + partsDirectory))?.sorted() ?? []
        for part in parts {
            if let d = try OwnFiles.contents(root + "/" + partsDirectory + "/" + part + "/failures.jsonl") { failures.append(d) }
        }
        if !failures.isEmpty { try AtomicFile.write(failures, to: root + "/failures.jsonl") }
        try? fm.removeItem(atPath: root + "/" + partsDirectory)
        try fm.removeItem(atPath: planPath)
        return plan.manifest
    }

    /// What a merge of `root` still waits for: nil when every rank's part is finished, else a
    /// sentence naming the unfinished and the missing ranks. Reads only the parts' manifests, so
    /// a merge step started early (`mtok merge --wait`) can ask it as often as it likes; it
    /// leaves nothing behind that would stop a rank from starting or resuming.
    public static func waitingFor(root: String) -> String? {
        let fm = FileManager.default
        let partNames = ((try? fm.contentsOfDirectory(atPath: root + "/" + partsDirectory)) ?? []).filter { $0.hasPrefix("rank-") }.sorted()
        var worlds = Set<Int>()
        var finished = Set<Int>(), unfinished = Set<Int>()
        for name in partNames {
            guard let folderRank = Int(name.dropFirst("rank-".count)) else { continue }
            guard let m = try? Manifest.read(fromCache: root + "/" + partsDirectory + "/" + name) else {
                unfinished.insert(folderRank)  // started, no manifest yet
                continue
            }
            if let w = m.part?.worldSize { worlds.insert(w) }
            if m.complete { finished.insert(folderRank) } else { unfinished.insert(folderRank) }
        }
        // Parts of two world sizes wait for nothing: the merge itself says which part is stray.
        guard worlds.count <= 1 else { return nil }
        guard let world = worlds.first else {
            return partNames.isEmpty ? "no rank has started (\(partsDirectory)/ is empty)" : "no rank has committed anything yet"
        }
        let missing = (0..<world).filter { !finished.contains($0) && !unfinished.contains($0) }
        if missing.isEmpty && unfinished.isEmpty { return nil }
        func list(_ ranks: [Int]) -> String {
            ranks.prefix(8).map(String.init).joined(separator: ", ") + (ranks.count > 8 ? ", … (\(ranks.count) in all)" : "")
        }
        var parts = ["\(finished.count) of \(world) parts finished"]
        if !unfinished.isEmpty { parts.append("unfinished: rank \(list(unfinished.sorted())) (running, or to resume with the same command)") }
        if !missing.isEmpty { parts.append("not started: rank \(list(missing))") }
        return parts.joined(separator: "; ")
    }

    static func makePlan(root: String) throws -> Plan {
        let fm = FileManager.default
        let partNames = ((try? fm.contentsOfDirectory(atPath: root + "/" + partsDirectory)) ?? []).filter { $0.hasPrefix("rank-") }.sorted()
        let hasManifest = fm.fileExists(atPath: root + "/" + Manifest.fileName)
        guard !partNames.isEmpty else {
            throw CacheError(.notACache, hasManifest ? "\(root) is already one cache (merged, or written by one process): nothing to merge"
                                                    : "\(root)/\(partsDirectory) holds no parts to merge")
        }
        guard !hasManifest else {
            throw CacheError(.settingsMismatch, "\(root) already has a manifest; merge only joins parts into an empty cache")
        }
        if let waiting = waitingFor(root: root) {
            throw CacheError(.unfinished, "\(root) cannot be merged yet: \(waiting). Let those ranks finish (the same command resumes each), then merge; `mtok merge --wait` waits for them")
        }
        var manifests: [Manifest] = []
        for name in partNames {
            let path = root + "/" + partsDirectory + "/" + name
            let m: Manifest
            do { m = try Manifest.read(fromCache: path) } catch {
                throw CacheError(.notACache, "\(path): \(error)")
            }
            guard m.complete else {
                let rank = m.part.map { " (the same command with --rank \($0.rank))" } ?? ""
                throw CacheError(.unfinished, "\(path) is not finished: run its rank to completion\(rank) first")
            }
            manifests.append(m)
        }
        let first = manifests[0]
        guard let world = first.part?.worldSize else { throw CacheError(.shardMismatch, "\(partNames[0]) is not a part of a scaled-out run") }
        if let stray = zip(partNames, manifests).first(where: { $0.1.part?.worldSize != world }) {
            throw CacheError(.shardMismatch, "the parts disagree on the world size: \(partNames[0]) was written as one of \(world), \(stray.0) as one of \(stray.1.part.map { "\($0.worldSize)" } ?? "none"); remove the stray part or rerun it")
        }
        // A part copied into another rank's folder would otherwise read as that rank missing.
        for (name, m) in zip(partNames, manifests) {
            if let folderRank = Int(name.dropFirst("rank-".count)), let rank = m.part?.rank, rank != folderRank {
                throw CacheError(.shardMismatch, "\(name) holds part \(rank) of \(world), not part \(folderRank): was it copied from another rank's folder?")
            }
        }
        let present = Set(manifests.compactMap { $0.part?.rank })
        let missing = (0..<world).filter { !present.contains($0) }
        guard missing.isEmpty, manifests.count == world else {
            let names = missing.prefix(8).map { "\($0)" }.joined(separator: ", ") + (missing.count > 8 ? ", ..." : "")
            throw CacheError(.missingShard, "\(manifests.count) of \(world) parts are present; missing rank(s) \(names): run them first")
        }
        for (rank, m) in manifests.enumerated() {
            guard m.part == Manifest.Part(rank: rank, worldSize: world) else {
                throw CacheError(.shardMismatch, "\(partNames[rank]) is part \(m.part.map { "\($0.rank)/\($0.worldSize)" } ?? "none"), expected \(rank)/\(world)")
            }
            guard m.settings == first.settings, m.recordsPerChunk == first.recordsPerChunk, m.compression == first.compression,
                  m.classes == first.classes else {
                let what: String
                if let d = first.settings.describeFirstDifference(from: m.settings, prefix: "settings.", here: "here") {
                    what = d
                } else if m.recordsPerChunk != first.recordsPerChunk {
                    what = "records_per_chunk is \(first.recordsPerChunk) there, \(m.recordsPerChunk) here"
                } else if m.compression != first.compression {
                    let (a, b) = (first.compression, m.compression)
                    what = a.level != b.level ? "zstd level is \(a.level) there, \(b.level) here"
                        : a.shuffle != b.shuffle ? "shuffle is \(a.shuffle) there, \(b.shuffle) here"
                        : a.literals != b.literals ? "literals are \(a.literals ?? "unrecorded") there, \(b.literals ?? "unrecorded") here"
                        : "the compression settings differ"
                } else {
                    what = "the class lists differ"
                }
                throw CacheError(.settingsMismatch, "\(partNames[rank]) was made with other settings than \(partNames[0]): \(what)")
            }
        }
        var merged = Manifest(createdBy: first.createdBy, recordsPerChunk: first.recordsPerChunk,
                              compressionLevel: first.compression.level, shuffle: first.compression.shuffle == Manifest.byteShuffle,
                              shardCapBytes: first.shardCapBytes, settings: first.settings, classes: first.classes)
        var moves: [[String]] = []
        var hasher = SHA256()
        var seen = Set<[UInt8]>()
        // Equal settings do not make equal layouts (a Python writer's parts may differ), and a
        // cache keeps one dtype and shape per tensor (FORMAT.md 4.1): each shard's first record must match
        // the first part's.
        var layout: (part: String, layout: RecordLayout)?
        var recordsBefore = 0  // records of the parts merged so far
        for (rank, m) in manifests.enumerated() {
            let partRoot = partsDirectory + "/" + partNames[rank]
            for entry in m.shards {
                let shard = try Shard(root: root + "/" + partRoot, entry: entry, recordsPerChunk: m.recordsPerChunk, shuffle: m.compression.shuffle)
                if let own = try shard.firstRecordLayout(shuffled: m.compression.shuffle == Manifest.byteShuffle) {
                    if let (firstPart, first) = layout, let d = own.difference(from: first) {
                        throw CacheError(.settingsMismatch, "\(partNames[rank]) has \(d), unlike \(firstPart): a cache keeps one dtype and shape per tensor")
                    }
                    if layout == nil { layout = (partNames[rank], own) }
                }
                try shard.forEachDigest { hasher.update(bufferPointer: $0) }
                try shard.forEachIdKey { key in
                    guard seen.insert(Array(SHA256.hash(data: key).prefix(16))).inserted else {
                        let (id, view) = ShardLayout.parseIdKey(key) ?? ("?", 0)
                        throw CacheError(.duplicateId, "stored in more than one part", at: CacheLocation(shard: partRoot + "/" + entry.file, id: id, view: view))
                    }
                }
                var moved = entry
                moved.file = String(format: "shards/shard-%05d.mdb", merged.shards.count)
                moves.append([partRoot + "/" + entry.file, moved.file])
                merged.shards.append(moved)
            }
            merged.inputsDone = (merged.inputsDone ?? 0) + (m.inputsDone ?? 0)
            // Each part's arithmetic segments, renumbered into the merged order and marked with
            // the part's rank; a part that recorded none gets one segment saying so.
            let partRecords = m.shards.reduce(0) { $0 + $1.records }
            let offset = recordsBefore
            recordsBefore += partRecords
            if manifests.contains(where: { $0.arithmetic != nil }), partRecords > 0 {
                if let problem = m.arithmeticProblem {
                    throw CacheError(.notACache, "\(partNames[rank])/\(Manifest.fileName): \(problem)")
                }
                let own = m.arithmetic ?? [Manifest.ArithmeticSegment(firstRecord: 0, records: partRecords, madeBy: nil)]
                merged.arithmetic = (merged.arithmetic ?? []) + own.filter { $0.records > 0 }.map {
                    Manifest.ArithmeticSegment(firstRecord: offset + $0.firstRecord, records: $0.records, rank: rank, madeBy: $0.madeBy)
                }
            }
        }
        merged.contentDigest = "sha256:" + CacheVerifier.hex(hasher.finalize())
        merged.complete = true
        merged.updateTotals()
        return Plan(moves: moves, manifest: merged)
    }
}
