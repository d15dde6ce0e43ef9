import Foundation
import ShardFormat
import ShardReader
import TensorFiles

/// `mtok tokenize --append`: adds the inputs a finished cache does not hold yet after its last
/// record, without re-encoding what is there.
///
/// The cache's settings keep the first run's `inputs` and gain one `appends` entry per append
/// (`kind`, `count`, `fingerprint` of the added inputs, and `first_input`, `first_record`: where
/// they begin), written before the first record is committed, so a killed append resumes like any
/// run: it filters the inputs against the records before `first_record` again, finds the same
/// list (the fingerprint says so), and goes on after its last committed batch. Everything else in
/// the settings (model, preprocessing, dtypes) must be what the cache was made with.
public struct CacheGrowth {
    /// The inputs to add, in input order, labelled as the cache numbers its classes.
    let inputs: DatasetInputs
    /// Inputs the cache held before this append (its commits count on from here).
    let inputBase: Int
    let recordBase: Int
    /// Inputs of the scan already in the cache.
    let alreadyThere: Int
    let existing: Manifest
    let resuming: Bool

    public static let appendsKey = "appends"

    /// Thrown when every input is already in a finished cache: nothing to do, not a failure.
    public struct NothingToAdd: Error, CustomStringConvertible {
        public let description: String
    }

    static func plan(cache path: String, input: String, scanned: DatasetInputs, view: Int) throws -> CacheGrowth {
        typealias SetupError = TokenizeJob.SetupError
        let m: Manifest
        do { m = try Manifest.read(fromCache: path) } catch {
            throw SetupError(message: "--append adds inputs to a cache; \(path) has none (\(error)): run without --append to create it")
        }
        guard m.part == nil else {
            throw SetupError(message: "\(path) is one part of a scaled-out run: merge the parts (mtok merge), then append to the merged cache")
        }
        let appends = Self.appends(m.settings)
        let resuming = !m.complete && !appends.isEmpty
        if !m.complete && appends.isEmpty {
            throw SetupError(message: "\(path) is unfinished: finish it first with the command that made it (without --append)")
        }
        let recordBase: Int, inputBase: Int
        if resuming, let last = appends.last, let r = last["first_record"]?.intValue, let i = last["first_input"]?.intValue {
            (recordBase, inputBase) = (r, i)
        } else if resuming {
            throw SetupError(message: "\(path): the manifest's last append entry lacks first_record/first_input")
        } else {
            recordBase = m.totals.records
            inputBase = appends.reduce(m.settings["inputs"]?["count"]?.intValue ?? 0) { $0 + ($1["count"]?.intValue ?? 0) }
        }

        let cache: TokenCache
        do { cache = try TokenCache(path: path) } catch { throw SetupError(message: "\(path): \(error)") }
        var kept = InputList(prefix: nil)
        var alreadyThere = 0
        for item in scanned.items {
            if let i = try cache.index(of: item.id, view: view), i < recordBase {
                alreadyThere += 1
                continue
            }
            // Labels are the cache's: a class keeps its number, and a new class would renumber
            // the ones after it (ImageFolder numbers classes in sorted order), so it is refused.
            var label = item.label
            switch (m.classes, scanned.classes) {
            case let (classes?, names?):
                guard label >= 0, label < names.count, let mapped = classes.firstIndex(of: names[label]) else {
                    throw SetupError(message: "\(input) has a class \(label >= 0 && label < names.count ? "'\(names[label])'" : "\(label)") that \(path) does not have (its classes: \(classes.prefix(10).joined(separator: ", "))\(classes.count > 10 ? ", …" : "")); new classes would change every label after them: write a new cache")
                }
                label = mapped
            case (_?, nil):
                throw SetupError(message: "\(path) was made from class folders; \(input) has none: give the same ImageFolder with the images added")
            case (nil, _?):
                throw SetupError(message: "\(path) has no classes; \(input) is an ImageFolder: give a list (.jsonl/.csv) with labels, or a flat folder")
            case (nil, nil):
                break
            }
            kept.append(id: item.id, path: item.path, label: label)
        }
        if kept.isEmpty && !resuming {
            throw NothingToAdd(description: "nothing to add: all \(alreadyThere) inputs of \(input) are already in \(path) (\(m.totals.records) records)")
        }
        return CacheGrowth(inputs: DatasetInputs(kind: scanned.kind, items: kept, classes: m.classes),
                           inputBase: inputBase, recordBase: recordBase, alreadyThere: alreadyThere,
                           existing: m, resuming: resuming)
    }

    /// The settings the cache gets: its own, with this append's entry; `run` (what this run
    /// would record) must agree with them on everything but the inputs.
    func settings(run: JSONValue, path: String) throws -> JSONValue {
        let own = Self.removing(["inputs", Self.appendsKey], from: existing.settings)
        if let d = own.describeFirstDifference(from: Self.removing(["inputs"], from: run), here: "now") {
            throw TokenizeJob.SetupError(message: "\(path) was made with other settings: \(d); --append adds inputs only, with the model, preprocessing and dtypes the cache was made with")
        }
        guard case let .object(inputs)? = run["inputs"] else { return existing.settings }
        let entry = JSONValue.object(inputs + [("first_input", .number(Double(inputBase))),
                                               ("first_record", .number(Double(recordBase)))])
        var appends = Self.appends(existing.settings)
        if resuming {
            guard appends.last == entry else {
                throw TokenizeJob.SetupError(message: "the inputs differ from those of the unfinished append to \(path) (\(appends.last?.compactText(limit: 200) ?? "?") there, \(entry.compactText(limit: 200)) now): run it again with the same inputs")
            }
        } else {
            appends.append(entry)
        }
        return Self.setting(Self.appendsKey, to: .array(appends), in: existing.settings)
    }

    static func appends(_ settings: JSONValue) -> [JSONValue] {
        if case let .array(items)? = settings[appendsKey] { return items }
        return []
    }

    static func removing(_ keys: Set<String>, from value: JSONValue) -> JSONValue {
        guard case let .object(members) = value else { return value }
        return .object(members.filter { !keys.contains($0.0) })
    }

    static func setting(_ key: String, to new: JSONValue, in value: JSONValue) -> JSONValue {
        guard case let .object(members) = value else { return value }
        return .object(members.filter { $0.0 != key } + [(key, new)])
    }
}
