import Foundation

/// One image to tokenize.
public struct InputItem: Sendable, Equatable {
    /// Where to read the file.
    public var path: String
    /// The record id: by default the path relative to the dataset root.
    public var id: String
    /// Class label, -1 when the dataset has none.
    public var label: Int

    public init(path: String, id: String, label: Int) {
        self.path = path
        self.id = id
        self.label = label
    }
}

/// What `mtok tokenize` reads, in the order records are numbered.
public struct DatasetInputs: Sendable {
    public enum Kind: String, Sendable { case imageFolder = "image-folder", list, flatFolder = "flat-folder" }

    public var kind: Kind
    public var items: [InputItem]
    /// Class names by label (ImageFolder: the sorted sub-folder names).
    public var classes: [String]?

    public struct ScanError: Error, CustomStringConvertible {
        public let path: String
        public let reason: String
        public var description: String { "\(path): \(reason)" }
    }

    /// torchvision's `IMG_EXTENSIONS`: what an ImageFolder picks up (compared case-insensitively).
    /// Files of these kinds that are not JPEG or PNG inside become failures, not silent skips.
    public static let imageExtensions: Set<String> = ["jpg", "jpeg", "png", "ppm", "bmp", "pgm", "tif", "tiff", "webp"]

    /// Reads `input`: a `.jsonl` or `.csv` list, an ImageFolder tree (class sub-folders, labels =
    /// index in the sorted folder names, as torchvision's `ImageFolder`), or a flat folder.
    public static func scan(_ input: String) throws -> DatasetInputs {
        let inputs = try scanUnchecked(input)
        try inputs.checkIds(source: input)
        return inputs
    }

    /// Every id must be usable as a cache key (1...508 UTF-8 bytes, no NUL) and appear once:
    /// found here, before any work, rather than when the writer refuses a batch hours later.
    func checkIds(source: String) throws {
        var seen = [String: Int]()
        for (n, item) in items.enumerated() {
            let size = item.id.utf8.count
            guard size > 0, size <= 508, !item.id.utf8.contains(0) else {
                throw ScanError(path: source, reason: "input \(n + 1) has an unusable id (1 to 508 UTF-8 bytes, no NUL): \"\(item.id.prefix(60))\"")
            }
            if let first = seen.updateValue(n, forKey: item.id) {
                throw ScanError(path: source, reason: "id \"\(item.id)\" is given to inputs \(first + 1) and \(n + 1)")
            }
        }
    }

    static func scanUnchecked(_ input: String) throws -> DatasetInputs {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: input, isDirectory: &isDir) else {
            throw ScanError(path: input, reason: "does not exist")
        }
        if !isDir.boolValue {
            let lower = input.lowercased()
            if lower.hasSuffix(".jsonl") { return try readJSONL(input) }
            if lower.hasSuffix(".csv") { return try readCSV(input) }
            throw ScanError(path: input, reason: "is a file but not a .jsonl or .csv list")
        }
        guard FileManager.default.isReadableFile(atPath: input) else { throw ScanError(path: input, reason: "is not readable") }
        let root = URL(fileURLWithPath: input).standardizedFileURL.path
        let entries = try listDirectory(root)
        let subdirs = entries.filter { isDirectory(root + "/" + $0) }.sorted(by: byteOrder)
        if !subdirs.isEmpty {
            var items: [InputItem] = []
            for (label, cls) in subdirs.enumerated() {
                for rel in try imagesBelow(root + "/" + cls) {
                    let id = cls + "/" + rel
                    items.append(InputItem(path: root + "/" + id, id: id, label: label))
                }
            }
            return DatasetInputs(kind: .imageFolder, items: items, classes: subdirs)
        }
        let files = entries.filter { isImageName($0) }.sorted(by: byteOrder)
        return DatasetInputs(kind: .flatFolder, items: files.map { InputItem(path: root + "/" + $0, id: $0, label: -1) }, classes: nil)
    }

    /// Python's `sorted` on str: code-point order, which is UTF-8 byte order (not Swift's `<`).
    static func byteOrder(_ a: String, _ b: String) -> Bool {
        a.utf8.lexicographicallyPrecedes(b.utf8)
    }

    static func isImageName(_ name: String) -> Bool {
        guard let dot = name.lastIndex(of: ".") else { return false }
        return imageExtensions.contains(name[name.index(after: dot)...].lowercased())
    }

    static func isDirectory(_ path: String) -> Bool {
        var d: ObjCBool = false
        return FileManager.default.fileExists(atPath: path, isDirectory: &d) && d.boolValue
    }

    static func listDirectory(_ path: String) throws -> [String] {
        do {
            return try FileManager.default.contentsOfDirectory(atPath: path).filter { !$0.hasPrefix(".") }
        } catch {
            throw ScanError(path: path, reason: "cannot list: \(error.localizedDescription)")
        }
    }

    /// Image files below `dir`, relative to it, in torchvision's `make_dataset` order: folders as
    /// `sorted(os.walk(dir, followlinks=True))` visits them (whole paths compared as strings, so
    /// "sub-a" comes before "sub/x", whose parent "sub" comes first), files sorted within each.
    /// A folder reached twice through symbolic links is listed once (os.walk would loop).
    static func imagesBelow(_ dir: String) throws -> [String] {
        var folders: [String] = []  // relative paths; "" is `dir` itself
        var seen = Set<String>()
        func collect(_ rel: String) throws {
            let path = rel.isEmpty ? dir : dir + "/" + rel
            guard seen.insert(URL(fileURLWithPath: path).resolvingSymlinksInPath().path).inserted else { return }
            folders.append(rel)
            for name in try listDirectory(path) where isDirectory(path + "/" + name) {
                try collect(rel.isEmpty ? name : rel + "/" + name)
            }
        }
        try collect("")
        // os.walk's roots are dir + "/" + rel: compare the "/" + rel tails.
        folders.sort { byteOrder($0.isEmpty ? "" : "/" + $0, $1.isEmpty ? "" : "/" + $1) }
        var out: [String] = []
        for rel in folders {
            let path = rel.isEmpty ? dir : dir + "/" + rel
            for name in try listDirectory(path).sorted(by: byteOrder) where !isDirectory(path + "/" + name) && isImageName(name) {
                out.append(rel.isEmpty ? name : rel + "/" + name)
            }
        }
        return out
    }

    static func resolve(_ path: String, relativeTo listFile: String) -> String {
        path.hasPrefix("/") ? path : URL(fileURLWithPath: listFile).deletingLastPathComponent().appendingPathComponent(path).path
    }

    /// JSON Lines: one object per line with `path` and optional `id` and `label`.
    static func readJSONL(_ file: String) throws -> DatasetInputs {
        guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { throw ScanError(path: file, reason: "cannot read as UTF-8") }
        var items: [InputItem] = []
        for (n, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.isEmpty { continue }
            guard let obj = try? JSONSerialization.jsonObject(with: Data(trimmed.utf8)) as? [String: Any],
                  let path = obj["path"] as? String, !path.isEmpty else {
                throw ScanError(path: file, reason: "line \(n + 1): expected an object with a \"path\" string")
            }
            let label = (obj["label"] as? Int) ?? -1
            let id = (obj["id"] as? String) ?? path
            items.append(InputItem(path: resolve(path, relativeTo: file), id: id, label: label))
        }
        return DatasetInputs(kind: .list, items: items, classes: nil)
    }

    /// CSV with a header row naming `path` and optionally `id` and `label` (no quoted commas).
    static func readCSV(_ file: String) throws -> DatasetInputs {
        guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { throw ScanError(path: file, reason: "cannot read as UTF-8") }
        var lines = text.split(separator: "\n").map { $0.trimmingCharacters(in: .init(charactersIn: "\r")) }.filter { !$0.isEmpty }
        guard !lines.isEmpty else { return DatasetInputs(kind: .list, items: [], classes: nil) }
        let header = lines.removeFirst().split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
        guard let pathCol = header.firstIndex(of: "path") else { throw ScanError(path: file, reason: "header has no \"path\" column") }
        let idCol = header.firstIndex(of: "id"), labelCol = header.firstIndex(of: "label")
        var items: [InputItem] = []
        for (n, line) in lines.enumerated() {
            let cols = line.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
            guard cols.count == header.count else { throw ScanError(path: file, reason: "line \(n + 2): \(cols.count) columns, header has \(header.count)") }
            var label = -1
            if let labelCol, !cols[labelCol].isEmpty {
                guard let l = Int(cols[labelCol]), l >= -1 else { throw ScanError(path: file, reason: "line \(n + 2): bad label \(cols[labelCol])") }
                label = l
            }
            let path = cols[pathCol]
            items.append(InputItem(path: resolve(path, relativeTo: file), id: idCol.map { cols[$0] }.flatMap { $0.isEmpty ? nil : $0 } ?? path, label: label))
        }
        return DatasetInputs(kind: .list, items: items, classes: nil)
    }
}
