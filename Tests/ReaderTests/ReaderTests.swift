import Foundation
import ShardFormat
import ShardReader
import ShardWriter
import TensorFiles
import TestSupport
import Testing

/// Runs Python with `tools/python` on the path (the mtokcache package without installing it).
enum Py {
    static var packagePath: String { TestSupport.packageRoot + "/tools/python" }

    /// Runs `script` with `arguments`; records an issue and returns nil when there is no Python.
    /// `native`: "1" runs mtokcache's C extension (and fails when it is not built), "0" its
    /// pure-Python code; nil leaves the choice to the package (the extension when built).
    static func run(_ script: String, _ arguments: [String] = [], native: String? = nil) throws -> TestSupport.ProcessResult? {
        guard let python = TestSupport.python else {
            Issue.record("no Python with numpy, lmdb and zstandard: run tools/install-deps.sh")
            return nil
        }
        var environment = ["PYTHONPATH": packagePath]
        var code = script
        if let native {
            environment["MTOKCACHE_NATIVE"] = native
            if native == "1" {
                code = "import mtokcache._accel as _a\nassert _a.native() is not None, 'the C extension is not built: "
                    + "tools/install-deps.sh builds it'\n" + script
            }
        }
        return try TestSupport.run(python, ["-c", code] + arguments, environment: environment)
    }

    /// The two implementations of mtokcache's hot paths, which must give the same results.
    static let implementations = ["1", "0"]

    /// Runs `script` and parses its stdout as JSON; records an issue when it fails.
    static func json(_ script: String, _ arguments: [String] = [], native: String? = nil) throws -> Any? {
        guard let r = try run(script, arguments, native: native) else { return nil }
        guard r.status == 0 else {
            Issue.record("python failed (\(r.status)): \(r.stderr)")
            return nil
        }
        return try JSONSerialization.jsonObject(with: Data(r.stdout.utf8))
    }

    /// True when `import torch` works in the test Python (the DataLoader test needs it).
    static let hasTorch: Bool = {
        guard let python = TestSupport.python,
              let r = try? TestSupport.run(python, ["-c", "import torch"]) else { return false }
        return r.status == 0
    }()
}

/// Writes a Swift cache of `count` synthetic records, in several shards and chunks.
func writeSwiftCache(_ path: String, count: Int, latent: String = "bf16", logvar: Bool = false, u32Indices: Bool = true,
                     u16Groups: Bool = true, shuffle: Bool = true, recordsPerChunk: Int = 4, shardCap: Int = 8 << 10,
                     tokens: Int = 16, channels: Int = 4, patches: Int = 24, finish: Bool = true) throws {
    var gen = SyntheticRecords()
    gen.tokens = tokens
    gen.patches = patches
    gen.channels = channels
    gen.latentDType = latent == "f32" ? .f32 : latent == "f16" ? .f16 : .bf16
    gen.indexDType = u32Indices ? .u32 : .u16
    gen.groupDType = u16Groups ? .u16 : .u8
    gen.withLogvar = logvar
    gen.seed = 5
    var options = CacheWriter.Options()
    options.recordsPerChunk = recordsPerChunk
    options.shardCapBytes = shardCap
    options.shuffle = shuffle
    options.threads = 2
    let writer = try CacheWriter(path: path, settings: gen.settings, options: options)
    var i = 0
    while i < count {
        let n = min(10, count - i)
        try writer.append((i..<(i + n)).map(gen.record))
        i += n
    }
    if finish { _ = try writer.finish() }
}

func bytes(base64 text: Any?) -> [UInt8] {
    guard let s = text as? String, let d = Data(base64Encoded: s) else { return [] }
    return Array(d)
}

func rawBytes<T>(_ array: [T]) -> [UInt8] { array.withUnsafeBytes { Array($0) } }

@Suite(.serialized)
struct CrossLanguageTests {
    static let dumpScript = """
        import base64, json, sys, numpy as np, mtokcache
        c = mtokcache.open(sys.argv[1], latent_format="raw")
        f = mtokcache.open(sys.argv[1])
        out = []
        for i in range(len(c)):
            r = c[i]
            t = {k: [r["dtypes"][k], list(r[k].shape), base64.b64encode(r[k].tobytes()).decode()]
                 for k in ("latents", "logvar", "indices", "groups") if k in r}
            out.append({"id": r["id"], "view": r["view"], "label": r["label"], "source_size": list(r["source_size"]),
                        "crop_box": list(r["crop_box"]), "sha": r["source_sha256"], "tensors": t})
        b = f.batch(list(range(len(f))))
        nat = mtokcache._accel.native()
        if nat is not None:  # the fast path takes every record now (all were seen once above)
            for x in (c, f):
                x._decode = None  # the Python path: calling it fails the test
                for i in range(len(x)):
                    x[i]
            f._batch_python = None
            f.batch(list(range(len(f))))
        print(json.dumps({"records": out, "batch_latents": base64.b64encode(b["latents"].tobytes()).decode(),
                          "batch_indices": base64.b64encode(b["indices"].tobytes()).decode(),
                          "batch_groups": base64.b64encode(b["groups"].tobytes()).decode(),
                          "batch_labels": b["labels"].tolist()}))
        """

    /// Compares what Python read (`dump`) with what Swift reads from the same cache, bit for bit.
    func expectSame(_ dump: [String: Any], _ cache: TokenCache) throws {
        let records = dump["records"] as! [[String: Any]]
        #expect(records.count == cache.count)
        for (i, p) in records.enumerated() {
            let r = try cache.record(at: i)
            #expect(p["id"] as? String == r.id && p["view"] as? Int == r.view && p["label"] as? Int == r.label)
            #expect(p["source_size"] as? [Int] == [r.sourceWidth, r.sourceHeight])
            #expect(p["crop_box"] as? [Int] == [r.cropBox.x, r.cropBox.y, r.cropBox.width, r.cropBox.height])
            #expect(p["sha"] as? String == r.sourceSHA256)
            let t = p["tensors"] as! [String: [Any]]
            var swiftTensors = [("latents", r.latents), ("indices", r.indices), ("groups", r.groups)]
            if let lv = r.logvar { swiftTensors.append(("logvar", lv)) }
            #expect(t.count == swiftTensors.count)
            for (name, tensor) in swiftTensors {
                let entry = try #require(t[name], "record \(i): Python has no \(name)")
                #expect(entry[0] as? String == tensor.dtype.rawValue, "record \(i) \(name)")
                #expect(entry[1] as? [Int] == tensor.shape, "record \(i) \(name)")
                let same = bytes(base64: entry[2]) == tensor.bytes
                #expect(same, "record \(i) \(name): bytes differ")
            }
        }
        let batch = try cache.batch(Array(0..<cache.count))
        let sameLatents = bytes(base64: dump["batch_latents"]) == rawBytes(batch.latents)
        let sameIndices = bytes(base64: dump["batch_indices"]) == rawBytes(batch.indices)
        let sameGroups = bytes(base64: dump["batch_groups"]) == rawBytes(batch.groups)
        #expect(sameLatents, "float32 batch latents differ")
        #expect(sameIndices && sameGroups, "batch indices or groups differ")
        #expect(dump["batch_labels"] as? [Int] == batch.labels.map(Int.init))
    }

    @Test(arguments: [("bf16", true, true), ("f16", false, true), ("f32", true, false), ("bf16", false, false)])
    func swiftWritesPythonReadsBitForBit(latent: String, logvar: Bool, shuffle: Bool) throws {
        let dir = try TestSupport.temporaryDirectory() + "/cache"
        try writeSwiftCache(dir, count: 45, latent: latent, logvar: logvar, u32Indices: shuffle, u16Groups: !logvar,
                            shuffle: shuffle)
        let cache = try TokenCache(path: dir)
        #expect(cache.manifest.shards.count > 1, "the test wants several shards")
        for native in Py.implementations {
            guard let dump = try Py.json(Self.dumpScript, [dir], native: native) as? [String: Any] else { return }
            try expectSame(dump, cache)
        }
    }

    @Test(arguments: [("bf16", "byte-planes"), ("f16", "none"), ("f32", "byte-planes")])
    func pythonWritesSwiftVerifiesAndReads(latent: String, shuffle: String) throws {
        let dir = try TestSupport.temporaryDirectory() + "/cache"
        let write = """
            import sys, numpy as np, mtokcache
            rng = np.random.default_rng(3)
            with mtokcache.Writer(sys.argv[1], settings={"from": "python"}, latent_dtype=sys.argv[2], shuffle=sys.argv[3],
                                  records_per_chunk=5, shard_cap_bytes=16384, classes=["a", "b", "c"]) as w:
                for i in range(57):
                    k = 12
                    w.append(id="py/%03d/ü.png" % i, view=i % 2, label=i % 3, source_size=(300 + i, 200),
                             crop_box=(i, 0, 200, 200), source_sha256="%064x" % i,
                             latents=rng.standard_normal((k, 6)).astype(np.float32),
                             logvar=rng.standard_normal((k, 6)).astype(np.float32),
                             indices=rng.integers(0, 2**20, k).astype(np.uint32),
                             groups=rng.integers(0, k, 30).astype(np.uint8))
            """
        var digests: [String?] = []
        for native in Py.implementations {
            try? FileManager.default.removeItem(atPath: dir)
            guard let w = try Py.run(write, [dir, latent, shuffle], native: native) else { return }
            try #require(w.status == 0, "python writer failed: \(w.stderr)")
            let verify = try TestSupport.mtok(["verify", dir, "--deep"])
            #expect(verify.status == 0, "mtok verify --deep: \(verify.stdout) \(verify.stderr)")
            let cache = try TokenCache(path: dir)
            #expect(cache.count == 57 && cache.manifest.shards.count > 1)
            #expect(try cache.index(of: "py/007/ü.png", view: 1) == 7)
            // The extension stores zstd literals raw with byte planes, as Swift's writer does
            // (Huffman without them); python-zstandard cannot store them raw.
            #expect(cache.manifest.compression.literals == (native == "1" && shuffle == "byte-planes" ? "raw" : "huffman"))
            digests.append(cache.manifest.contentDigest)
            guard let dump = try Py.json(Self.dumpScript, [dir], native: native) as? [String: Any] else { return }
            try expectSame(dump, cache)
        }
        #expect(digests.count == 2 && digests[0] != nil && digests[0] == digests[1], "the two writers' records differ")
    }

    /// A PyTorch job on each of two ranks writes its part with the Python writer; `mtok merge`
    /// joins them into one cache that verifies and holds every record once, in rank order.
    @Test func pythonWrittenPartsMergeIntoOneCache() throws {
        let root = try TestSupport.temporaryDirectory() + "/cache"
        let write = """
            import sys, numpy as np, mtokcache
            root = sys.argv[1]
            for rank in range(2):
                rng = np.random.default_rng(rank)
                with mtokcache.Writer("%s/parts/rank-%05d" % (root, rank), settings={"from": "python"},
                                      part=(rank, 2), records_per_chunk=4) as w:
                    for i in range(rank * 10, rank * 10 + 10):
                        w.append(id="img/%02d" % i, latents=rng.standard_normal((9, 4)).astype(np.float32),
                                 indices=rng.integers(0, 512, 9).astype(np.uint32),
                                 groups=rng.integers(0, 9, 16).astype(np.uint8))
            """
        guard let w = try Py.run(write, [root]) else { return }
        try #require(w.status == 0, "python writer failed: \(w.stderr)")
        let merged = try TestSupport.mtok(["merge", root])
        #expect(merged.status == 0, "\(merged.stderr)")
        #expect(try TestSupport.mtok(["verify", root, "--deep"]).status == 0)
        let cache = try TokenCache(path: root)
        #expect(cache.count == 20 && cache.manifest.part == nil)
        #expect(try (0..<20).map { try cache.record(at: $0).id } == (0..<20).map { String(format: "img/%02d", $0) })
    }

    /// A Swift writer stops mid-chunk without finishing; a Python job resumes the cache, appends
    /// and finishes it: nothing Swift committed is lost and `mtok verify --deep` accepts the result.
    @Test func pythonResumesWhatSwiftLeft() throws {
        let dir = try TestSupport.temporaryDirectory() + "/cache"
        try writeSwiftCache(dir, count: 37, recordsPerChunk: 4, shardCap: 24 << 10, finish: false)
        let script = """
            import sys, numpy as np, mtokcache
            path = sys.argv[1]
            settings = mtokcache.open(path).manifest["settings"]
            rng = np.random.default_rng(9)
            with mtokcache.Writer(path, settings=settings, resume=True) as w:
                assert w.committed == 37, w.committed
                assert w._pending_committed > 0 and len(w._shards) > 0, "wanted a sealed shard and a partial chunk"
                for i in range(20):
                    w.append(id="py/%02d" % i, latents=rng.standard_normal((16, 4)).astype(np.float32),
                             indices=rng.integers(0, 512, 16).astype(np.uint32),
                             groups=rng.integers(0, 16, 24).astype(np.uint16))
            """
        guard let w = try Py.run(script, [dir]) else { return }
        try #require(w.status == 0, "python writer failed: \(w.stderr)")
        let verify = try TestSupport.mtok(["verify", dir, "--deep"])
        #expect(verify.status == 0, "mtok verify --deep: \(verify.stdout) \(verify.stderr)")
        let cache = try TokenCache(path: dir)
        #expect(cache.count == 57 && cache.manifest.complete)
        #expect(try cache.record(at: 37).id == "py/00")
        guard let dump = try Py.json(Self.dumpScript, [dir]) as? [String: Any] else { return }
        try expectSame(dump, cache)
    }

    /// Ids with quotes, backslashes, control-free Unicode and JSON escapes take the strict header
    /// parser instead of the stream's metadata scan; both must give the same records.
    @Test func streamReadsIdsThatNeedTheStrictParser() throws {
        let dir = try TestSupport.temporaryDirectory() + "/cache"
        let write = """
            import sys, numpy as np, mtokcache
            ids = ['plain/%d' % i for i in range(6)] + ['q"uote', 'back\\slash', 'ünï/日本', 'tab\\tin', 'emoji 😀', 'a/b']
            rng = np.random.default_rng(1)
            with mtokcache.Writer(sys.argv[1], records_per_chunk=3) as w:
                for i, name in enumerate(ids):
                    w.append(id=name, view=i % 2, label=i, latents=rng.standard_normal((8, 2)).astype(np.float32),
                             indices=rng.integers(0, 99, 8).astype(np.uint16), groups=rng.integers(0, 8, 9).astype(np.uint8))
            print("\\n".join(ids))
            """
        guard let w = try Py.run(write, [dir]) else { return }
        try #require(w.status == 0, "\(w.stderr)")
        let written = w.stdout.split(separator: "\n", omittingEmptySubsequences: false).dropLast().map(String.init)
        let cache = try TokenCache(path: dir)
        var options = TokenStream.Options()
        options.shuffle.enabled = false
        options.batchSize = 5
        options.threads = 2
        let stream = TokenStream(cache: cache, rank: 0, worldSize: 1, epoch: 0, seed: 0, options: options)
        var ids: [String] = [], latents: [Float] = []
        while let b = try stream.next() {
            ids += b.ids
            latents += b.latents.floats
        }
        #expect(ids == written)
        #expect(ids == (0..<cache.count).map { (try? cache.record(at: $0).id) ?? "?" })
        #expect(latents == (try cache.batch(Array(0..<cache.count)).latents))
    }

    /// A record whose frame was written without the content checksum (then one byte of it
    /// altered, which zstd alone cannot notice): every reader in both languages refuses it.
    @Test func frameWithoutChecksumIsRefusedEverywhere() throws {
        let dir = try TestSupport.temporaryDirectory() + "/cache"
        try writeSwiftCache(dir, count: 12, shuffle: false, recordsPerChunk: 4, shardCap: 1 << 20)
        // Record 5 (chunk 1, slot 1) recompressed without a checksum, a literal byte flipped.
        let forge = """
            import sys; sys.path.insert(0, sys.argv[2])
            from hostile_caches import frame_without_checksum
            frame_without_checksum(sys.argv[1])
            print("ok")
            """
        guard let forged = try Py.run(forge, [dir, TestSupport.packageRoot + "/tools"]) else { return }
        #expect(forged.status == 0 && forged.stdout.contains("ok"), "\(forged.stderr)")
        let cache = try TokenCache(path: dir)
        do {
            _ = try cache.record(at: 5)
            Issue.record("a frame without a checksum was read")
        } catch let e as CacheError {
            #expect(e.location.index == 5 && e.description.contains("no content checksum"), "\(e)")
        }
        #expect(throws: CacheError.self) { _ = try cache.batch([4, 5]) }
        #expect(try cache.record(at: 4).view >= 0)  // the other records of the chunk still read
        #expect(CacheVerifier.verify(path: dir, deep: true).faults.contains { $0.index == 5 })
        for command in [["get", dir, "--index", "5"], ["stream", dir]] {
            let r = try TestSupport.mtok(command)
            #expect(r.status == 1 && r.stderr.contains("no content checksum"), "\(command): \(r.stderr)")
        }
        let python = """
            import sys, mtokcache
            c = mtokcache.open(sys.argv[1])
            c[4]
            for read in (lambda: c[5], lambda: c.batch([4, 5])):
                try:
                    read()
                    print("read")
                except mtokcache.CorruptRecordError as e:
                    print("refused" if "no content checksum" in str(e) else "other: %s" % e)
            """
        guard let r = try Py.run(python, [dir]) else { return }
        #expect(r.stdout == "refused\nrefused\n", "\(r.stdout) \(r.stderr)")
    }

    /// Both readers take JSON nested as deep as the Swift parser allows and refuse one level
    /// more: a manifest must not be a cache to one and not to the other.
    @Test func manifestNestingLimitIsTheSameInBothLanguages() throws {
        let dir = try TestSupport.temporaryDirectory() + "/cache"
        try writeSwiftCache(dir, count: 3)
        let path = dir + "/" + Manifest.fileName
        let good = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
        // settings is 1 container deep; `levels` more arrays put the innermost 0 at 1 + levels.
        for (levels, accepted) in [(JSONValue.maxDepth - 2, true), (JSONValue.maxDepth - 1, false)] {
            var nested: Any = 0
            for _ in 0..<levels { nested = [nested] }
            var m = good
            m["settings"] = nested
            try JSONSerialization.data(withJSONObject: m).write(to: URL(fileURLWithPath: path))
            let swift = (try? TokenCache(path: dir)) != nil
            #expect(swift == accepted, "Swift, innermost value \(1 + levels) deep")
            guard let r = try Py.run("import sys, mtokcache\ntry:\n    mtokcache.open(sys.argv[1]); print('open')\nexcept mtokcache.NotACacheError as e:\n    print('refused')", [dir]) else { return }
            #expect(r.stdout == (accepted ? "open\n" : "refused\n"), "Python, innermost value \(1 + levels) deep: \(r.stdout) \(r.stderr)")
        }
    }

    /// tools/python/tests, once with the C extension and once with the pure-Python code.
    @Test(arguments: Py.implementations)
    func pythonUnitTests(native: String) throws {
        guard let r = try Py.run("import runpy, sys; sys.argv = ['t']; runpy.run_path(sys.argv_path, run_name='__main__')"
            .replacingOccurrences(of: "sys.argv_path", with: "'\(Py.packagePath)/tests/test_mtokcache.py'"),
            native: native) else { return }
        #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
        #expect(r.stdout.contains(" 0 failed"))
    }

    @Test(.enabled(if: Py.hasTorch, "needs PyTorch in the test Python"))
    func dataLoaderWithFourWorkersYieldsEveryRecordOncePerEpoch() throws {
        let dir = try TestSupport.temporaryDirectory() + "/cache"
        try writeSwiftCache(dir, count: 203, recordsPerChunk: 4, shardCap: 16 << 10)
        let script = """
            import sys, numpy as np, torch, mtokcache
            from torch.utils.data import DataLoader, DistributedSampler
            from mtokcache.datasets import CacheDataset, CacheIterableDataset
            path = sys.argv[1]
            c = mtokcache.open(path)
            c[0]  # the parent has the environments open before the workers fork
            for epoch in (0, 1):
                ds = CacheIterableDataset(path, seed=17, batch_size=8, rank=0, world_size=1)
                ds.set_epoch(epoch)
                seen = [int(i) for b in DataLoader(ds, batch_size=8, num_workers=4) for i in b["index"]]
                assert sorted(seen) == list(range(203)), "epoch %d: not every record exactly once" % epoch
                assert seen == c.stream_indices(0, 1, epoch, 17).tolist(), "not the stream order"
            ds = CacheIterableDataset(path, seed=17, batch_size=8, rank=0, world_size=1, epoch=1, batched=True)
            seen = [int(i) for b in DataLoader(ds, batch_size=None, num_workers=4) for i in b["index"]]
            assert seen == c.stream_indices(0, 1, 1, 17).tolist(), "batched: not the stream order"
            ranks = []
            for r in range(2):
                ds = CacheIterableDataset(path, seed=17, batch_size=8, rank=r, world_size=2, epoch=1)
                ranks.append([int(i) for b in DataLoader(ds, batch_size=8, num_workers=4) for i in b["index"]])
                assert ranks[r] == c.stream_indices(r, 2, 1, 17).tolist()
            assert len(ranks[0]) == len(ranks[1]) == 102 and set(ranks[0]) | set(ranks[1]) == set(range(203))
            m = CacheDataset(path)
            got = []
            for r in range(2):
                s = DistributedSampler(m, num_replicas=2, rank=r, shuffle=True, seed=3)
                s.set_epoch(1)
                for b in DataLoader(m, batch_size=16, sampler=s, num_workers=4):
                    assert b["latents"].shape[1:] == (16, 4) and b["latents"].dtype == torch.float32
                    assert torch.equal(b["latents"][0], torch.from_numpy(c[int(b["index"][0])]["latents"]))
                    got += [int(i) for i in b["index"]]
            assert set(got) == set(range(203)) and len(got) == 204
            # compact: the same values in stored types (bf16, int32), through workers, both datasets.
            full = {int(i): (b["latents"][k], b["indices"][k], b["groups"][k])
                    for b in DataLoader(CacheIterableDataset(path, seed=2, batch_size=8, batched=True), batch_size=None)
                    for k, i in enumerate(b["index"])}
            for ds, bs in ((CacheIterableDataset(path, seed=2, batch_size=8, latent_format="raw", index_dtype="int32"), 8),
                           (CacheIterableDataset(path, seed=2, batch_size=8, latent_format="raw", index_dtype="int32", batched=True), None),
                           (CacheDataset(path, latent_format="raw", index_dtype="int32"), 16)):
                n = 0
                for b in DataLoader(ds, batch_size=bs, num_workers=2):
                    assert b["latents"].dtype == torch.bfloat16 and b["indices"].dtype == torch.int32
                    assert b["groups"].dtype == torch.int32
                    for k, i in enumerate(b["index"]):
                        lat, ind, grp = full[int(i)]
                        assert torch.equal(b["latents"][k].float(), lat) and torch.equal(b["indices"][k].long(), ind)
                        assert torch.equal(b["groups"][k].long(), grp)
                        n += 1
                assert n == 203, (type(ds).__name__, n)
            print("ok")
            """
        guard let r = try Py.run(script, [dir]) else { return }
        #expect(r.status == 0 && r.stdout.contains("ok"), "\(r.stdout)\n\(r.stderr)")
    }
}

@Suite struct StreamOrderTests {
    static let layouts: [[Int]] = [[1000], [100, 0, 37, 64, 1], [17, 17, 17], [5], []]

    @Test func sameOrderAsPython() throws {
        // (layout, seed, epoch, block, window) combinations; seeds cover the 64-bit range.
        let seeds: [UInt64] = [0, 42, UInt64.max]
        var configs: [(Int, UInt64, UInt64, Int, Int)] = []
        for l in Self.layouts.indices { for s in seeds { for e: UInt64 in [0, 3] { for (b, w) in [(1, 1), (4, 3), (16, 64)] {
            configs.append((l, s, e, b, w))
        } } } }
        let spec = configs.map { "[\($0.0), \($0.1), \($0.2), \($0.3), \($0.4)]" }.joined(separator: ",")
        let layouts = Self.layouts.map { "\($0)" }.joined(separator: ",")
        let script = """
            import json
            from mtokcache import order
            layouts = [\(layouts)]
            print(json.dumps([order.permutation(layouts[l], s, e, b, w).tolist() for l, s, e, b, w in [\(spec)]]))
            """
        guard let perms = try Py.json(script) as? [[Int]] else { return }
        #expect(perms.count == configs.count)
        for (c, p) in zip(configs, perms) {
            let o = StreamOrder(shardRecords: Self.layouts[c.0], seed: c.1, epoch: c.2, blockRecords: c.3, windowBlocks: c.4)
            let same = o.permutation == p  // a Bool, so a failure does not print 1,000-element arrays
            #expect(same, "layout \(Self.layouts[c.0]) seed \(c.1) epoch \(c.2) block \(c.3) window \(c.4)")
        }
    }

    @Test func mtokStreamMatchesPythonStream() throws {
        let dir = try TestSupport.temporaryDirectory() + "/cache"
        try writeSwiftCache(dir, count: 131, recordsPerChunk: 4, shardCap: 8 << 10)
        let cases: [(rank: Int, world: Int, epoch: Int, seed: Int, start: Int, padding: String)] =
            [(0, 1, 0, 0, 0, "pad"), (2, 3, 1, 9, 0, "pad"), (1, 4, 7, 123, 8, "drop"), (3, 5, 2, 5, 25, "pad")]
        for c in cases {
            let swiftIds = try TestSupport.mtok(["stream", dir, "--rank", "\(c.rank)", "--world-size", "\(c.world)",
                                                 "--epoch", "\(c.epoch)", "--seed", "\(c.seed)", "--start", "\(c.start)",
                                                 "--padding", c.padding, "--ids", "--threads", "3", "--batch-size", "7"])
            #expect(swiftIds.status == 0, "\(swiftIds.stderr)")
            let script = """
                import sys, mtokcache
                c = mtokcache.open(sys.argv[1])
                for r in c.stream(\(c.rank), \(c.world), \(c.epoch), \(c.seed), start=\(c.start), padding="\(c.padding)"):
                    print(r["id"], r["view"])
                """
            guard let py = try Py.run(script, [dir]) else { return }
            #expect(py.status == 0, "\(py.stderr)")
            #expect(!py.stdout.isEmpty && py.stdout == swiftIds.stdout, "rank \(c.rank)/\(c.world) epoch \(c.epoch)")
        }
    }

    @Test func mtokStreamIdsStayOneLineEach() throws {
        let dir = try TestSupport.temporaryDirectory() + "/cache"
        var gen = SyntheticRecords()
        gen.tokens = 4
        gen.patches = 6
        gen.channels = 2
        let names = ["two\nlines", #"back\slash "quoted""#, "tab\there", #"plain "name""#, "bell\u{7}", "del\u{7F}nel\u{85}ls\u{2028}"]
        let records = names.enumerated().map { i, name in
            var r = gen.record(i)
            r.id = name
            return r
        }
        let writer = try CacheWriter(path: dir, settings: gen.settings, options: CacheWriter.Options())
        try writer.append(records)
        _ = try writer.finish()
        let out = try TestSupport.mtok(["stream", dir, "--ids", "--no-shuffle"])
        #expect(out.status == 0, "\(out.stderr)")
        #expect(out.stdout == #"""
            two\nlines 0
            back\\slash \"quoted\" 0
            tab\there 0
            plain "name" 0
            bell\u0007 0
            del\u007fnel\u0085ls\u2028 0

            """#)
    }

    /// The worked example of Schemas/STREAM.md section 5.
    @Test func documentTestVectors() {
        #expect(StreamOrder.base(seed: 0, epoch: 0, tag: 1) == 0xB382_A305_F441_4F5E)
        let keys = (0..<4).map { StreamOrder.key(base: StreamOrder.base(seed: 0, epoch: 0, tag: 1), $0) }
        #expect(keys == [0x2F10_1FE2_1496_EA20, 0xA006_2408_8F65_D5B6, 0x7496_3FA7_9989_4AB9, 0xFD94_6AE7_1E2C_1470])
        let o = StreamOrder(shardRecords: [5, 7], seed: 0, epoch: 0, blockRecords: 4, windowBlocks: 2)
        #expect(o.permutation == [0, 7, 5, 1, 8, 6, 2, 3, 4, 11, 9, 10])
        #expect((0..<5).map { o.rankIndices(rank: $0, worldSize: 5) } == [[0, 6, 9], [7, 2, 10], [5, 3, 0], [1, 4, 7], [8, 11, 5]])
        #expect((0..<5).map { o.rankIndices(rank: $0, worldSize: 5, padding: .drop) } == [[0, 6], [7, 2], [5, 3], [1, 4], [8, 11]])
        #expect(o.rankIndices(rank: 1, worldSize: 5, start: 5) == [2, 10])
        // A start at or past the epoch's end gives nothing (and no arithmetic overflow).
        for start in [15, 16, Int.max - 1, Int.max] { #expect(o.rankIndices(rank: 4, worldSize: 5, start: start).isEmpty) }
    }

    @Test(arguments: 1...7)
    func ranksAreDisjointCompleteAndEqual(worldSize: Int) {
        let o = StreamOrder(shardRecords: [50, 3, 60], seed: 11, epoch: 4, blockRecords: 8, windowBlocks: 2)
        #expect(o.permutation.sorted() == Array(0..<113))
        for padding in StreamOrder.Padding.allCases {
            let parts = (0..<worldSize).map { o.rankIndices(rank: $0, worldSize: worldSize, padding: padding) }
            #expect(Set(parts.map(\.count)).count == 1, "ranks get different counts")
            let all = parts.flatMap { $0 }
            switch padding {
            case .drop:
                #expect(all.count == 113 / worldSize * worldSize && Set(all).count == all.count)
            case .pad:
                #expect(all.count == (113 + worldSize - 1) / worldSize * worldSize && Set(all) == Set(0..<113))
            }
        }
    }

    @Test func resumingAndElasticWorldSize() {
        let o = StreamOrder(shardRecords: [40, 41], seed: 2, epoch: 0, blockRecords: 4, windowBlocks: 3)
        for w in 1...5 {
            for r in 0..<w {
                let full = o.rankIndices(rank: r, worldSize: w)
                for start in [0, w, 4 * w, 13] {
                    let tail = o.rankIndices(rank: r, worldSize: w, start: start)
                    #expect(Array(full.suffix(tail.count)) == tail, "w \(w) r \(r) start \(start)")
                }
            }
        }
        // 4 ranks consume global positions 0..<40, then 3 ranks continue from 40: the job sees P in order.
        var sequence = [Int](repeating: -1, count: 81)
        for r in 0..<4 { for (j, i) in o.rankIndices(rank: r, worldSize: 4).prefix(10).enumerated() { sequence[j * 4 + r] = i } }
        for r in 0..<3 {
            var g = 40
            while g % 3 != r { g += 1 }
            for i in o.rankIndices(rank: r, worldSize: 3, start: 40, padding: .drop) {
                sequence[g] = i
                g += 3
            }
        }
        #expect(sequence == o.permutation)
        #expect(StreamOrder(shardRecords: [40, 41], seed: 2, epoch: 1, blockRecords: 4).permutation != o.permutation)
    }
}

@Suite struct TokenStreamTests {
    /// A recycled batch whose arrays the consumer still holds a copy of is never overwritten:
    /// the copy keeps its values (copy-on-write), while later batches still come out right.
    @Test func recyclingABatchThatIsStillHeldLeavesItIntact() throws {
        let dir = try TestSupport.temporaryDirectory() + "/cache"
        try writeSwiftCache(dir, count: 60, latent: "bf16", logvar: false, recordsPerChunk: 4, shardCap: 8 << 10)
        let cache = try TokenCache(path: dir)
        var options = TokenStream.Options()
        options.threads = 1
        options.prefetch = 1
        options.batchSize = 5
        let stream = TokenStream(cache: cache, rank: 0, worldSize: 1, epoch: 0, seed: 3, options: options)
        let first = try #require(try stream.next())
        let kept = (first.latents, first.indices, first.groups)
        let expected = try cache.batch(first.records)
        stream.recycle(first)
        var rest: [Int] = [], latents: [Float] = []
        while let b = try stream.next() {
            rest += b.records
            latents += b.latents.floats
            stream.recycle(b)
        }
        #expect(rawBytes(kept.0.floats) == rawBytes(expected.latents) && kept.1 == expected.indices && kept.2 == expected.groups,
                "a held batch changed after it was recycled")
        #expect(rawBytes(latents) == rawBytes(try cache.batch(rest).latents))
        #expect(stream.reusedArrays > 0)
    }

    /// Also the two bf16 layouts the float32 widening reads (byte planes, interleaved), and a
    /// K·C of 39 whose rows start off 16-byte boundaries and end mid-vector.
    @Test(arguments: [(true, 16, 4), (false, 13, 3)])
    func threadCountsAndPrefetchNeverChangeTheOrderOrTheData(shuffle: Bool, tokens: Int, channels: Int) throws {
        let dir = try TestSupport.temporaryDirectory() + "/cache"
        try writeSwiftCache(dir, count: 150, latent: "bf16", logvar: true, shuffle: shuffle, recordsPerChunk: 4,
                            shardCap: 8 << 10, tokens: tokens, channels: channels)
        let cache = try TokenCache(path: dir)
        let order = StreamOrder(cache: cache, seed: 8, epoch: 2)
        let want = order.rankIndices(rank: 1, worldSize: 2)
        let reference = try cache.batch(want)
        // Some runs hand every batch back (`recycle`): the next ones are decoded into its memory.
        for (threads, prefetch, batchSize, recycle) in [(1, 1, 7, true), (2, 4, 32, false), (4, 1, 1, true), (3, 2, 200, true)] {
            var options = TokenStream.Options()
            options.threads = threads
            options.prefetch = prefetch
            options.batchSize = batchSize
            let stream = TokenStream(cache: cache, rank: 1, worldSize: 2, epoch: 2, seed: 8, options: options)
            var records: [Int] = [], latents: [Float] = [], logvar: [Float] = [], indices: [UInt32] = []
            var groups: [UInt16] = [], labels: [Int32] = [], ids: [String] = []
            var next = 0
            while let b = try stream.next() {
                #expect(b.firstSample == next)
                next += b.count
                records += b.records
                latents += b.latents.floats
                logvar += b.logvar?.floats ?? []
                indices += b.indices
                groups += b.groups
                labels += b.labels
                ids += b.ids
                if recycle { stream.recycle(b) }
            }
            #expect(stream.peakPrefetched <= prefetch, "more batches in flight than the prefetch depth")
            if recycle && stream.batchCount > prefetch + threads + 1 {
                #expect(stream.reusedArrays > 0, "no batch was decoded into a recycled one")
            }
            let sameOrder = records == want
            #expect(sameOrder, "order differs with threads \(threads), prefetch \(prefetch), batch size \(batchSize)")
            let sameFloats = rawBytes(latents) == rawBytes(reference.latents) && rawBytes(logvar) == rawBytes(reference.logvar ?? [])
            let sameRest = indices == reference.indices && groups == reference.groups && labels == reference.labels && ids == reference.ids
            #expect(sameFloats, "latents or logvar differ from TokenCache.batch (threads \(threads))")
            #expect(sameRest, "indices, groups, labels or ids differ from TokenCache.batch (threads \(threads))")
        }
    }

    @Test func latentFormatsAndResume() throws {
        let dir = try TestSupport.temporaryDirectory() + "/cache"
        try writeSwiftCache(dir, count: 60, latent: "f32", recordsPerChunk: 4, shardCap: 8 << 10)
        let cache = try TokenCache(path: dir)
        var options = TokenStream.Options()
        options.batchSize = 10
        options.threads = 2
        options.latentFormat = .bfloat16
        let full = TokenStream(cache: cache, rank: 0, worldSize: 3, epoch: 0, seed: 1, options: options)
        var fullRecords: [Int] = []
        while let b = try full.next() {
            fullRecords += b.records
            guard case let .bfloat16(bits) = b.latents else {
                Issue.record("asked for bf16 latents")
                break
            }
            let f32 = try cache.batch(b.records).latents
            #expect(bits.count == f32.count)
            for (x, y) in zip(bits, f32) where abs(Float(bitPattern: UInt32(x) << 16) - y) > abs(y) * 0.01 {
                Issue.record("bf16 \(x) far from \(y)")
                break
            }
        }
        #expect(fullRecords.count == 20)
        // Resume at global position 30 (10 samples of each of the 3 ranks consumed).
        let resumed = TokenStream(cache: cache, rank: 0, worldSize: 3, epoch: 0, seed: 1, start: 30, options: options)
        var tail: [Int] = []
        while let b = try resumed.next() { tail += b.records }
        #expect(tail == Array(fullRecords.suffix(10)))
    }

    @Test func corruptRecordIsReportedWithItsLocation() throws {
        let dir = try TestSupport.temporaryDirectory() + "/cache"
        try writeSwiftCache(dir, count: 8, recordsPerChunk: 8, shardCap: 1 << 20)
        let cache = try TokenCache(path: dir)
        let shardPath = dir + "/" + cache.manifest.shards[0].file
        // Flip a byte in the middle of the file's chunk data: some frame's checksum then fails.
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: shardPath)
        var data = try Data(contentsOf: URL(fileURLWithPath: shardPath))
        let frameStart = data.count / 2
        var found = false
        for i in stride(from: 0, to: data.count - 4, by: 1) where data[i] == 0x28 && data[i + 1] == 0xB5 && data[i + 2] == 0x2F && data[i + 3] == 0xFD {
            if i > frameStart / 4 { data[i + 40] ^= 0x5A; found = true; break }
        }
        try #require(found)
        try data.write(to: URL(fileURLWithPath: shardPath))
        let reopened = try TokenCache(path: dir)
        var options = TokenStream.Options()
        options.shuffle.enabled = false
        options.batchSize = 1
        let stream = TokenStream(cache: reopened, rank: 0, worldSize: 1, epoch: 0, seed: 0, options: options)
        var error: CacheError?
        do { while try stream.next() != nil {} } catch let e as CacheError { error = e }
        let e = try #require(error)
        #expect(e.location.shard == "shards/shard-00000.mdb" && e.location.chunk == 0 && e.location.index != nil)
    }
}
