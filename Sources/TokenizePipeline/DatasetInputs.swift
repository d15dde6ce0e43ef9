import Foundation
import TensorFiles

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

/// Inputs packed into one byte buffer: ids (and paths, where a path is not `prefix/id`) as
/// UTF-8, offsets and labels in flat arrays. About 50 bytes an input instead of two heap strings
/// each (about 200): ImageNet's 1.28 million inputs fit in some 60 MB, and the list is the one
/// part of `mtok tokenize`'s memory that grows with the dataset.
public struct InputList: RandomAccessCollection, Sendable {
    /// Paths are `prefix + "/" + id` when set (folders); stored per input otherwise (lists).
    private let prefix: String?
    private var text: [UInt8] = []
    /// Per input: where its id starts in `text` (its path follows it when stored); one extra
    /// entry marks the end.
    private var starts: [Int] = [0]
    /// Per input, when paths are stored: where the path starts.
    private var pathStarts: [Int] = []
    private var labels: [Int32] = []

    public init(prefix: String?) { self.prefix = prefix }

    /// Appends an input; `path` is given exactly when the list has no prefix.
    public mutating func append(id: String, path: String? = nil, label: Int) {
        precondition((path == nil) == (prefix != nil), "a folder's paths are prefix/id; a list's are given")
        text += id.utf8
        if let path {
            pathStarts.append(text.count)
            text += path.utf8
        }
        starts.append(text.count)
        labels.append(Int32(clamping: label))
    }

    public var startIndex: Int { 0 }
    public var endIndex: Int { labels.count }

    public subscript(i: Int) -> InputItem {
        let idEnd = prefix == nil ? pathStarts[i] : starts[i + 1]
        let id = String(decoding: text[starts[i]..<idEnd], as: UTF8.self)
        let path = prefix.map { $0 + "/" + id } ?? String(decoding: text[pathStarts[i]..<starts[i + 1]], as: UTF8.self)
        return InputItem(path: path, id: id, label: Int(labels[i]))
    }

    /// Keeps the first `n` inputs.
    public mutating func truncate(to n: Int) {
        let n = Swift.min(Swift.max(0, n), count)
        text.removeSubrange(starts[n]...)
        starts.removeSubrange((n + 1)...)
        if prefix == nil { pathStarts.removeSubrange(n...) }
        labels.removeSubrange(n...)
    }
}

/// What `mtok tokenize` reads, in the order records are numbered.
public struct DatasetInputs: Sendable {
    public enum Kind: String, Sendable { case imageFolder = "image-folder", list, flatFolder = "flat-folder" }

    public var kind: Kind
    public var items: InputList
    /// Class names by label (ImageFolder: the sorted sub-folder names).
    public var classes: [String]?
    /// Files in the folders that were left out because their extension is not an image's
    /// (notes, archives, `.DS_Store`-like leftovers), and the first of them, for the summary.
    public var skippedFiles = 0
    public var skippedExample: String?

    init(kind: Kind, items: InputList, classes: [String]?, skipped: Skipped = Skipped()) {
        self.kind = kind
        self.items = items
        self.classes = classes
        skippedFiles = skipped.count
        skippedExample = skipped.example
    }

    /// Counts what a folder scan leaves out.
    struct Skipped {
        var count = 0
        var example: String?
        mutating func add(_ path: String) {
            count += 1
            if example == nil { example = path }
        }
    }

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
        // Nothing to do is almost always a wrong path or a list in another format: say so
        // rather than write an empty cache.
        guard !inputs.items.isEmpty else {
            throw ScanError(path: input, reason: inputs.kind == .list ? "the list names no images"
                                : "holds no image files (extensions \(imageExtensions.sorted().joined(separator: ", ")))")
        }
        try inputs.checkIds(source: input)
        return inputs
    }

    /// Every id must be usable as a cache key (1...508 UTF-8 bytes, no NUL) and appear once:
    /// found here, before any work, rather than when the writer refuses a batch hours later.
    func checkIds(source: String) throws {
        // Keyed by a 64-bit FNV-1a of the id, not the id itself: a set of a million strings
        // would be the largest thing tokenize ever holds. Equal hashes are told apart by
        // comparing the ids.
        var seen = [UInt64: Int]()
        var sharing = [UInt64: [Int]]()  // further inputs whose different ids share a hash
        seen.reserveCapacity(items.count)
        for (n, item) in items.enumerated() {
            let utf8 = item.id.utf8
            guard utf8.count > 0, utf8.count <= 508, !utf8.contains(0) else {
                throw ScanError(path: source, reason: "input \(n + 1) has an unusable id (1 to 508 UTF-8 bytes, no NUL): \(JSONValue.quoted(String(item.id.prefix(60))))")
            }
            var h: UInt64 = 0xcbf2_9ce4_8422_2325
            for b in utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
            guard let earlier = seen[h] else {
                seen[h] = n
                continue
            }
            if let first = ([earlier] + (sharing[h] ?? [])).first(where: { items[$0].id == item.id }) {
                throw ScanError(path: source, reason: "id \(JSONValue.quoted(item.id)) is given to inputs \(first + 1) and \(n + 1)")
            }
            sharing[h, default: []].append(n)
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
        let subdirs = entries.filter(\.isDirectory).map(\.name).sorted(by: byteOrder)
        var skipped = Skipped()
        if !subdirs.isEmpty {
            var items = InputList(prefix: root)
            for (label, cls) in subdirs.enumerated() {
                for rel in try imagesBelow(root + "/" + cls, skipped: &skipped, shownAs: cls + "/") {
                    let id = cls + "/" + rel
                    items.append(id: id, label: label)
                }
            }
            // Files beside the class folders are not inputs of an ImageFolder either.
            for entry in entries where !entry.isDirectory { skipped.add(entry.name) }
            return DatasetInputs(kind: .imageFolder, items: items, classes: subdirs, skipped: skipped)
        }
        for entry in entries where !entry.isDirectory && !isImageName(entry.name) { skipped.add(entry.name) }
        let files = entries.filter { !$0.isDirectory && isImageName($0.name) }.map(\.name).sorted(by: byteOrder)
        var items = InputList(prefix: root)
        for name in files { items.append(id: name, label: -1) }
        return DatasetInputs(kind: .flatFolder, items: items, classes: nil, skipped: skipped)
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

    /// The entries of a folder, hidden ones left out, each with whether it is a folder (a
    /// symbolic link to one counts, as os.walk(followlinks=True) has it). The kind comes from
    /// readdir where the file system gives it: one stat per file would take minutes for
    /// ImageNet on a network file system.
    static func listDirectory(_ path: String) throws -> [(name: String, isDirectory: Bool)] {
        guard let dir = opendir(path) else {
            throw ScanError(path: path, reason: "cannot list: \(String(cString: strerror(errno)))")
        }
        defer { closedir(dir) }
        var out: [(name: String, isDirectory: Bool)] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name.hasPrefix(".") { continue }  // also "." and ".."
            let kind = Int32(entry.pointee.d_type)
            let folder = kind == Int32(DT_DIR) ? true
                : kind == Int32(DT_REG) ? false
                : isDirectory(path + "/" + name)  // a link, or a file system that does not say
            out.append((name, folder))
        }
        return out
    }

    /// Image files below `dir`, relative to it, in torchvision's `make_dataset` order: folders as
    /// `sorted(os.walk(dir, followlinks=True))` visits them (whole paths compared as strings, so
    /// "sub-a" comes before "sub/x", whose parent "sub" comes first), files sorted within each.
    /// A folder reached twice through symbolic links is listed once (os.walk would loop).
    static func imagesBelow(_ dir: String, skipped: inout Skipped, shownAs label: String = "") throws -> [String] {
        var folders: [String] = []  // relative paths; "" is `dir` itself
        var seen = Set<String>()
        func collect(_ rel: String) throws {
            let path = rel.isEmpty ? dir : dir + "/" + rel
            guard seen.insert(URL(fileURLWithPath: path).resolvingSymlinksInPath().path).inserted else { return }
            folders.append(rel)
            for entry in try listDirectory(path) where entry.isDirectory {
                try collect(rel.isEmpty ? entry.name : rel + "/" + entry.name)
            }
        }
        try collect("")
        // os.walk's roots are dir + "/" + rel: compare the "/" + rel tails.
        folders.sort { byteOrder($0.isEmpty ? "" : "/" + $0, $1.isEmpty ? "" : "/" + $1) }
        var out: [String] = []
        for rel in folders {
            let path = rel.isEmpty ? dir : dir + "/" + rel
            let entries = try listDirectory(path).filter { !$0.isDirectory }
            for entry in entries where !isImageName(entry.name) {
                skipped.add(label + (rel.isEmpty ? entry.name : rel + "/" + entry.name))
            }
            let files = entries.filter { isImageName($0.name) }.map(\.name)
            for name in files.sorted(by: byteOrder) {
                out.append(rel.isEmpty ? name : rel + "/" + name)
            }
        }
        return out
    }

    /// `path` as written in the list at `listFile`: absolute, or relative to the list's folder.
    /// Plain string joining: Foundation's URL would stat every path (seconds for ImageNet).
    static func resolve(_ path: String, relativeTo listFile: String) -> String {
        if path.hasPrefix("/") { return path }
        let folder = listFile.utf8.lastIndex(of: UInt8(ascii: "/")).map { String(listFile[..<$0]) } ?? "."
        return folder + "/" + path
    }

    /// Without leading and trailing spaces and tabs (Foundation's trimming bridges through
    /// NSString, a third of the time of reading a million-line list).
    static func trimmed<S: StringProtocol>(_ text: S) -> String {
        let s = Substring(text)
        let u = s.utf8
        let blank: (UInt8) -> Bool = { $0 == 0x20 || $0 == 0x09 }
        guard let first = u.firstIndex(where: { !blank($0) }) else { return "" }
        let last = u.lastIndex(where: { !blank($0) })!
        return String(s[first...last])
    }

    /// The file as text, without a UTF-8 byte-order mark (spreadsheets write one).
    static func readText(_ file: String) throws -> String {
        guard let data = FileManager.default.contents(atPath: file) else { throw ScanError(path: file, reason: "cannot read") }
        let body = data.starts(with: [0xEF, 0xBB, 0xBF]) ? data.dropFirst(3) : data[...]
        guard let text = String(data: body, encoding: .utf8) else { throw ScanError(path: file, reason: "is not UTF-8 text") }
        return text
    }

    /// Lines split at LF, a CR before it dropped. (Splitting a String at "\n" would not split
    /// CRLF files: "\r\n" is one Character.)
    static func lines(_ text: String) -> [Substring] {
        text.utf8.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).map { line in
            Substring(line.last == UInt8(ascii: "\r") ? line.dropLast() : line)
        }
    }

    /// An integer written as a JSON number (no fraction, within ±2^53).
    static func integer(_ d: Double) -> Int? {
        d.rounded(.towardZero) == d && abs(d) < 9.0e15 ? Int(d) : nil
    }

    /// An id given in a JSON list: a string, or an integer (written in decimal); absent or null:
    /// none (`.some(nil)`); anything else: `nil`.
    static func listId(_ value: JSONValue?) -> String?? {
        switch value {
        case nil, .null?: return .some(nil)
        case let .string(s)?: return s
        case let .number(d)?: return integer(d).map { String($0) }
        default: return nil
        }
    }

    /// A label: an integer in -1...Int32.max (batches carry labels as int32); absent, null or blank: -1 (no label); anything else: `nil`.
    static func listLabel(_ value: JSONValue?) -> Int? {
        switch value {
        case nil, .null?: return -1
        case let .string(s)?:
            let t = trimmed(s)
            if t.isEmpty { return -1 }
            guard let l = Int(t), l >= -1, l <= Int(Int32.max) else { return nil }
            return l
        case let .number(d)?:
            guard let l = integer(d), l >= -1, l <= Int(Int32.max) else { return nil }
            return l
        default: return nil
        }
    }

    /// JSON Lines: one object per line with `path` and optional `id` (string or integer) and
    /// `label` (integer in -1...2147483647); blank lines are skipped.
    static func readJSONL(_ file: String) throws -> DatasetInputs {
        var items = InputList(prefix: nil)
        for (n, line) in lines(try readText(file)).enumerated() {
            let text = trimmed(line)
            if text.isEmpty { continue }
            func bad(_ why: String) -> ScanError { ScanError(path: file, reason: "line \(n + 1): \(why)") }
            let obj: JSONValue
            do { obj = try JSONValue.parse(Array(text.utf8)) } catch { throw bad("not JSON (\(error))") }
            guard case .object = obj, let path = obj["path"]?.stringValue, !path.isEmpty else {
                throw bad("expected an object with a \"path\" string")
            }
            guard let label = listLabel(obj["label"]) else { throw bad("\"label\" must be an integer in -1...2147483647") }
            guard let id = listId(obj["id"]) else { throw bad("\"id\" must be a string or an integer") }
            items.append(id: id ?? path, path: resolve(path, relativeTo: file), label: label)
        }
        return DatasetInputs(kind: .list, items: items, classes: nil)
    }

    /// CSV (RFC 4180: quoted fields may hold commas, quotes doubled, line breaks; LF or CRLF)
    /// with a header row naming `path` and optionally `id` and `label`; blank lines are skipped.
    static func readCSV(_ file: String) throws -> DatasetInputs {
        var header: [String]?
        var pathCol = 0, idCol: Int?, labelCol: Int?
        var items = InputList(prefix: nil)
        // Row by row into the packed list: no array of every row's fields.
        try forEachCSVRow(try readText(file), file: file) { line, cols in
            guard let columns = header else {
                let names = cols.map { trimmed($0).lowercased() }
                guard let p = names.firstIndex(of: "path") else { throw ScanError(path: file, reason: "header has no \"path\" column") }
                (header, pathCol, idCol, labelCol) = (names, p, names.firstIndex(of: "id"), names.firstIndex(of: "label"))
                return
            }
            func bad(_ why: String) -> ScanError { ScanError(path: file, reason: "line \(line): \(why)") }
            guard cols.count == columns.count else { throw bad("\(cols.count) columns, header has \(columns.count)") }
            guard let label = listLabel(labelCol.map { .string(cols[$0]) }) else { throw bad("label \(JSONValue.quoted(cols[labelCol!])) is not an integer in -1...2147483647") }
            let path = cols[pathCol]
            guard !path.isEmpty else { throw bad("empty path") }
            let id = idCol.map { cols[$0] }.flatMap { $0.isEmpty ? nil : $0 } ?? path
            items.append(id: id, path: resolve(path, relativeTo: file), label: label)
        }
        return DatasetInputs(kind: .list, items: items, classes: nil)
    }

    /// Calls `body` with each row of a CSV text and the line it starts on; rows of only blank
    /// space are skipped. Works on UTF-8 bytes: every delimiter is ASCII, so multi-byte
    /// characters pass through.
    static func forEachCSVRow(_ text: String, file: String, _ body: (Int, [String]) throws -> Void) throws {
        let quote = UInt8(ascii: "\""), comma = UInt8(ascii: ","), cr = UInt8(ascii: "\r"), lf = UInt8(ascii: "\n")
        var fields: [String] = []
        var field: [UInt8] = []
        var quoted = false, wasQuoted = false
        var line = 1, rowLine = 1
        func endField() {
            let s = String(decoding: field, as: UTF8.self)
            fields.append(wasQuoted ? s : trimmed(s))
            field.removeAll(keepingCapacity: true)
            wasQuoted = false
        }
        func endRow() throws {
            endField()
            if !(fields.count == 1 && fields[0].isEmpty) { try body(rowLine, fields) }
            fields.removeAll(keepingCapacity: true)
            rowLine = line
        }
        var bytes = Array(text.utf8)
        bytes.append(lf)  // a last row without a line break ends like the others
        var i = 0
        while i < bytes.count {
            let c = bytes[i]
            i += 1
            if quoted {
                if c == quote {
                    if i < bytes.count && bytes[i] == quote { field.append(quote); i += 1 } else { quoted = false }
                } else {
                    if c == lf { line += 1 }
                    field.append(c)
                }
                continue
            }
            switch c {
            case quote:
                guard field.allSatisfy({ $0 == 0x20 || $0 == 0x09 }) else {
                    throw ScanError(path: file, reason: "line \(line): a quote inside an unquoted field")
                }
                field.removeAll(keepingCapacity: true)
                quoted = true
                wasQuoted = true
            case comma: endField()
            case cr where i < bytes.count && bytes[i] == lf: continue  // CRLF: the LF ends the row
            case cr, lf:
                line += 1
                try endRow()
            default:
                field.append(c)
            }
        }
        if quoted { throw ScanError(path: file, reason: "line \(rowLine): a quoted field is not closed") }
    }
}
