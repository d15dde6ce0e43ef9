import Foundation
import TestSupport
import Testing

/// Caches with something planted where a cache file goes: a symbolic link pointing outside, a
/// FIFO, a link to a device. Writers refuse to write through any of it (nothing outside the
/// cache is created or changed) and readers refuse a manifest they could not read to its end.
@Suite(.serialized)
struct PlantedFileTests {
    /// A folder outside the cache with one file whose bytes must survive every attempt.
    struct Outside {
        let dir: String
        let file: String
        let original = Data((0..<4096).map { UInt8($0 % 251) })
        init() throws {
            dir = try TestSupport.temporaryDirectory("outside")
            file = dir + "/victim"
            try original.write(to: URL(fileURLWithPath: file))
        }
        /// The victim is unchanged and nothing else appeared beside it.
        func isUntouched() -> Bool {
            FileManager.default.contents(atPath: file) == original
                && (try? FileManager.default.contentsOfDirectory(atPath: dir)) == ["victim"]
        }
    }

    func synth(_ cache: String, records: Int = 40) throws -> TestSupport.ProcessResult {
        try TestSupport.mtok(["synth-cache", cache, "--records", "\(records)", "--tokens", "16", "--channels", "4", "--seed", "1"])
    }

    func link(_ at: String, to target: String) throws {
        try FileManager.default.createSymbolicLink(atPath: at, withDestinationPath: target)
    }

    @Test(arguments: ["shards/shard-00000.mdb", "shards/shard-00000.mdb-lock", ".writer.lock", "shards"])
    func newCacheWithAPlantedLinkIsRefused(_ name: String) throws {
        let outside = try Outside()
        let cache = try TestSupport.temporaryDirectory() + "/cache"
        try FileManager.default.createDirectory(atPath: cache + "/shards", withIntermediateDirectories: true)
        if name == "shards" {
            try FileManager.default.removeItem(atPath: cache + "/shards")
            try link(cache + "/shards", to: outside.dir)
        } else {
            try link(cache + "/" + name, to: name.hasSuffix("lock") ? outside.dir + "/new-lock" : outside.file)
        }
        let r = try synth(cache)
        #expect(r.status != 0, "wrote through a planted \(name)")
        #expect(r.stderr.contains("symbolic link") && r.stderr.contains(name), "\(r.stderr)")
        #expect(outside.isUntouched(), "\(name): the file outside the cache changed or a file appeared there")
    }

    /// A resumed writer: the unsealed shard replaced by a link, or the manifest's temporary
    /// file planted as one (that one is removed, not written through: the run goes on).
    @Test func resumedCacheWithAPlantedLinkIsRefused() throws {
        let outside = try Outside()
        let cache = try TestSupport.temporaryDirectory() + "/cache"
        #expect(try synth(cache, records: 20).status == 0)
        try link(cache + "/manifest.json.tmp", to: outside.file)
        #expect(try synth(cache, records: 30).status == 0)
        #expect(outside.isUntouched())
        #expect(try TestSupport.mtok(["verify", cache, "--deep"]).status == 0)
        // The last shard, as a killed writer leaves it, swapped for a link to a copy outside.
        let manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: cache + "/manifest.json"))) as! [String: Any]
        let last = ((manifest["shards"] as! [[String: Any]]).last!["file"] as! String)
        try FileManager.default.removeItem(atPath: outside.file)
        try FileManager.default.copyItem(atPath: cache + "/" + last, toPath: outside.file)
        let before = FileManager.default.contents(atPath: outside.file)
        try FileManager.default.removeItem(atPath: cache + "/" + last)
        try link(cache + "/" + last, to: outside.file)
        var m = manifest
        var shards = m["shards"] as! [[String: Any]]
        shards[shards.count - 1]["sealed"] = false
        shards[shards.count - 1].removeValue(forKey: "sha256")
        m["shards"] = shards
        m["complete"] = false
        m["content_digest"] = NSNull()
        try JSONSerialization.data(withJSONObject: m).write(to: URL(fileURLWithPath: cache + "/manifest.json"))
        let r = try synth(cache, records: 60)
        #expect(r.status != 0 && r.stderr.contains("symbolic link"), "\(r.stderr)")
        #expect(FileManager.default.contents(atPath: outside.file) == before, "the shard outside the cache changed")
    }

    /// A manifest that is a FIFO or a link to /dev/zero: refused at once by `mtok` and by the
    /// Python package (a reader would otherwise block, or read until memory runs out).
    @Test(arguments: ["fifo", "zero"])
    func unreadableManifestIsRefusedAtOnce(_ kind: String) throws {
        let cache = try TestSupport.temporaryDirectory() + "/cache"
        #expect(try synth(cache, records: 5).status == 0)
        let manifest = cache + "/manifest.json"
        try FileManager.default.removeItem(atPath: manifest)
        if kind == "fifo" {
            #expect(mkfifo(manifest, 0o644) == 0)
        } else {
            try link(manifest, to: "/dev/zero")
        }
        for command in [["info", cache], ["verify", cache], ["get", cache, "--index", "0"]] {
            let r = try TestSupport.run("/usr/bin/timeout", ["20", TestSupport.mtokBinary] + command)
            #expect(r.status == 1 && (r.stdout + r.stderr).contains("manifest.json is not a regular file"), "\(command): \(r.status) \(r.stdout) \(r.stderr)")
        }
        if let python = TestSupport.python {
            let script = """
                import sys; sys.path.insert(0, sys.argv[2])
                import mtokcache
                try:
                    mtokcache.open(sys.argv[1])
                except mtokcache.NotACacheError as e:
                    print("refused:", e)
                """
            let r = try TestSupport.run("/usr/bin/timeout", ["20", python, "-c", script, cache, TestSupport.packageRoot + "/tools/python"])
            #expect(r.stdout.hasPrefix("refused:") && r.stdout.contains("not a regular file"), "\(r.status) \(r.stdout) \(r.stderr)")
        }
    }

    /// Readers follow a shard link to shared storage, and `mtok verify` says where it leads; a
    /// link to something that is not a regular file is refused.
    @Test func verifySaysWhereLinkedShardsLive() throws {
        let outside = try Outside()
        let cache = try TestSupport.temporaryDirectory() + "/cache"
        #expect(try synth(cache, records: 10).status == 0)
        let shard = cache + "/shards/shard-00000.mdb"
        let moved = outside.dir + "/moved.mdb"
        try FileManager.default.moveItem(atPath: shard, toPath: moved)
        try link(shard, to: moved)
        let r = try TestSupport.mtok(["verify", cache, "--deep"])
        let real = URL(fileURLWithPath: moved).resolvingSymlinksInPath().path
        #expect(r.status == 0 && r.stdout.contains("NOTE   shards/shard-00000.mdb lives outside the cache, at \(real)"), "\(r.stdout)")
        #expect(try TestSupport.mtok(["get", cache, "--index", "3"]).status == 0)
        try FileManager.default.removeItem(atPath: shard)
        try link(shard, to: "/dev/zero")
        let zero = try TestSupport.run("/usr/bin/timeout", ["20", TestSupport.mtokBinary, "verify", cache])
        #expect(zero.status == 1 && zero.stdout.contains("not a regular file"), "\(zero.stdout)")
    }

    /// tools/hostile_caches.py: crafted and damaged caches (and random bit flips, sealed and
    /// unsealed) against every command and the Python package: no signal death, no hang, no
    /// memory past the bound, nothing outside the cache touched, no silent wrong read.
    @Test func hostileCachesHurtNoReader() throws {
        guard let python = TestSupport.python else {
            Issue.record("no Python with numpy, lmdb and zstandard: run tools/install-deps.sh")
            return
        }
        let r = try TestSupport.run(python, [TestSupport.packageRoot + "/tools/hostile_caches.py",
                                             "--mtok", TestSupport.mtokBinary, "--flips", "16", "--seed", "7"])
        #expect(r.status == 0 && r.stdout.contains("no crash, no hang"), "\(r.stdout.suffix(3000)) \(r.stderr.suffix(2000))")
        #expect(r.stdout.contains("C extension read every case as its pure-Python code did"), "\(r.stdout.suffix(500))")
    }

    /// A scaled-out rank: `parts` planted as a link to a folder outside.
    @Test func rankWithPlantedPartsLinkIsRefused() throws {
        let outside = try Outside()
        let dir = try TestSupport.temporaryDirectory()
        let model = dir + "/tiny.safetensors"
        #expect(try TestSupport.mtok(["model", "init", "--preset", "tiny", "--seed", "3", "--out", model]).status == 0)
        let cache = dir + "/cache"
        try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
        try link(cache + "/parts", to: outside.dir)
        let r = try TestSupport.mtok(["tokenize", TestSupport.packageRoot + "/tools/demo/images", "--model", model,
                                      "--out", cache, "--rank", "0", "--world-size", "2"])
        #expect(r.status != 0 && r.stderr.contains("symbolic link"), "\(r.stderr)")
        #expect(outside.isUntouched())
    }
}
