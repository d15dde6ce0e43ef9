import Foundation
import TestSupport
import Testing

/// `tools/convert_checkpoint.py` on checkpoints the PyTorch reference builds in the layouts the
/// MergeVQ training code saves (Lightning with EMA copies, bare, DDP), through `mtok encode`
/// against the reference; the script (tools/check_convert.py) prints one line per check.
struct ConvertCheckpointTests {
    @Test func everyCheckpointLayoutConvertsAndEncodesAsTheReference() throws {
        guard let python = TestSupport.python else { Issue.record("no Python (.venv)"); return }
        let r = try TestSupport.run(python, [TestSupport.packageRoot + "/tools/check_convert.py", "--mtok", TestSupport.mtokBinary])
        if r.status == 77 { try Test.cancel(Comment(rawValue: r.stdout.trimmingCharacters(in: .whitespacesAndNewlines))) }
        #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
        let passed = r.stdout.split(separator: "\n").filter { $0.hasPrefix("ok ") }
        // 4 layouts × 6 checks, the preprocessing, 2 cross-layout checks, 4 refusals.
        #expect(passed.count == 31, "\(r.stdout)")
        for name in ["lightning-ema", "lightning-raw", "bare", "ddp"] {
            #expect(r.stdout.contains("ok     \(name): encodes as the PyTorch reference: groups equal, indices equal"), "\(name)")
        }
        #expect(r.stdout.contains("check_convert: passed"))
    }
}
