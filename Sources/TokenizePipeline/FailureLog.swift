import Foundation
import ImageDecoding
import ShardFormat
import ShardWriter

/// `failures.jsonl`: one JSON object per input that could not be tokenized
/// (Schemas/failure.schema.json).
enum FailureLog {
    struct Entry: Codable {
        var index: Int
        var id: String
        var path: String
        var kind: String
        var reason: String

        init(index: Int, id: String, path: String, kind: ImageDecodingError.Kind, reason: String) {
            self.index = index
            self.id = id
            self.path = path
            self.kind = kind.rawValue
            self.reason = reason
        }
    }

    static func append(_ entries: [Entry], to path: String) throws {
        guard !entries.isEmpty else { return }
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var data = Data()
        for entry in entries {
            data.append(try e.encode(entry))
            data.append(0x0A)
        }
        let h = FileHandle(fileDescriptor: try OwnFiles.open(path, O_WRONLY | O_CREAT), closeOnDealloc: true)
        defer { try? h.close() }
        try h.seekToEnd()
        try h.write(contentsOf: data)
        try h.synchronize()
    }

    /// Keeps only entries of inputs before `index`: those after the resume point will be retried.
    static func truncate(at path: String, keepingBelow index: Int) throws {
        guard let data = try OwnFiles.contents(path) else { return }
        var kept = Data()
        for line in data.split(separator: 0x0A) where !line.isEmpty {
            if let entry = try? JSONDecoder().decode(Entry.self, from: Data(line)), entry.index < index {
                kept.append(contentsOf: line)
                kept.append(0x0A)
            }
        }
        if kept != data { try AtomicFile.write(kept, to: path) }
    }
}
