import ArgumentParser
import Foundation
import ImageDecoding
import ShardFormat
import ShardReader
import ShardWriter
import TensorFiles

/// `mtok report`: one self-contained HTML page about a cache (no script, no network: charts are
/// inline SVG, pictures inline PNG).
struct ReportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "report",
        abstract: "Write one self-contained HTML page: summary, settings, failures, statistics as charts, sample merge-group pictures.")

    @Argument(help: "The cache directory.") var cache: String
    @Option(help: "The dataset root the ids are relative to, for pictures over the photos (else over gray).") var images: String?
    @Option(help: "Output .html.") var out: String
    @Option(help: "How many sample records to draw (spread over the cache).") var samples = 8

    func validate() throws {
        guard (0...64).contains(samples) else { throw ValidationError("--samples must be 0...64") }
    }

    func run() throws {
        let c = try openCache(cache)
        let stats: CacheStatistics
        do {
            stats = try CacheStatistics.stored(in: c)
                ?? CacheStatistics.compute(c, codebookSize: CacheStatistics.codebookSize(settings: c.manifest.settings))
        } catch { throw fail("\(cache): \(error)") }
        var html = Page(title: "mtok report: \(cache)")
        html.summary(c)
        html.failures(cache)
        html.statistics(stats)
        var notes: [String] = []
        html.samples(c, images: images, count: samples, notes: &notes)
        do {
            try Data(html.finished().utf8).write(to: URL(fileURLWithPath: out))
        } catch {
            throw fail("cannot write \(out): \(describeFileError(error))")
        }
        notes.forEach { FileHandle.standardError.write(Data("mtok report: \($0)\n".utf8)) }
        print("wrote \(out)")
    }
}

/// The page, built as text; every value from the cache goes through `escape`.
struct Page {
    private var body = ""
    let title: String

    init(title: String) { self.title = title }

    static func escape(_ s: String) -> String {
        var out = ""
        for ch in s {
            switch ch {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            default: out.append(ch)
            }
        }
        return out
    }

    mutating func add(_ s: String) { body += s + "\n" }

    func finished() -> String {
        """
        <!DOCTYPE html>
        <html lang="en"><head><meta charset="utf-8"><title>\(Self.escape(title))</title>
        <style>
        body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222;background:#fff}
        h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
        table{border-collapse:collapse}td,th{padding:2px 10px 2px 0;text-align:left;vertical-align:top}
        td.n{text-align:right;font-variant-numeric:tabular-nums}code{font-size:12px}
        .grid{display:grid;grid-template-columns:repeat(2,1fr);gap:16px}.grid figure{margin:0}
        figcaption{font-size:12px;color:#555}svg{background:#fafafa;border:1px solid #eee}
        </style></head><body>
        <h1>\(Self.escape(title))</h1>
        \(body)</body></html>

        """
    }

    mutating func summary(_ c: TokenCache) {
        let m = c.manifest
        var rows: [(String, String)] = [
            ("records", "\(c.count) in \(m.shards.count) shard(s)"),
            ("complete", m.complete ? "yes" : "no (unfinished: the same mtok tokenize command resumes it)"),
            ("payload", formatBytes(m.totals.payloadBytes) + " uncompressed, " + formatBytes(m.totals.compressedBytes) + " compressed"),
            ("content digest", m.contentDigest ?? "(none until finished)"),
        ]
        if let line = arithmeticLine(m.arithmeticUse) { rows.append(("arithmetic", line)) }
        if let classes = m.classes { rows.append(("classes", "\(classes.count): " + classes.prefix(30).joined(separator: ", ") + (classes.count > 30 ? ", …" : ""))) }
        for line in InfoCommand.readableSettings(m.settings) ?? [] {
            let key = String(line.prefix(16)).trimmingCharacters(in: .whitespaces)
            let value = String(line.dropFirst(16))
            if key.isEmpty, let last = rows.popLast() { rows.append((last.0, last.1 + "; " + value)) } else { rows.append((key, value)) }
        }
        add("<h2>Summary</h2><table>")
        for (k, v) in rows { add("<tr><th>\(Self.escape(k))</th><td>\(Self.escape(v))</td></tr>") }
        add("</table>")
        add("<details><summary>All settings (JSON)</summary><pre><code>\(Self.escape(m.settings.compactText(limit: 200_000)))</code></pre></details>")
    }

    mutating func failures(_ cache: String) {
        guard let n = InfoCommand.failureCount(cache), n > 0 else {
            add("<h2>Failures</h2><p>None.</p>")
            return
        }
        add("<h2>Failures</h2><p>\(n) input(s) could not be tokenized (<code>failures.jsonl</code>)\(n > 50 ? "; the first 50:" : ":")</p><table><tr><th>id</th><th>reason</th></tr>")
        let data = (try? FileHandle(forReadingFrom: URL(fileURLWithPath: cache + "/failures.jsonl")).read(upToCount: 1 << 20)) ?? Data()
        for line in data.split(separator: 0x0A).prefix(50) {
            let object = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any]
            add("<tr><td>\(Self.escape(object?["id"] as? String ?? "?"))</td><td>\(Self.escape(object?["reason"] as? String ?? "?"))</td></tr>")
        }
        add("</table>")
    }

    mutating func statistics(_ s: CacheStatistics) {
        add("<h2>Latents per channel</h2><p>Mean ± standard deviation (bars) and min–max (thin lines) over \(s.latents.first?.count ?? 0) values each; normalise with (x − mean) / std.</p>")
        add(Chart.channels(s.latents))
        if let lv = s.logvar {
            add("<h2>Log-variance per channel</h2>")
            add(Chart.channels(lv))
        }
        if let cb = s.codebook {
            let share = 100 * Double(cb.used) / Double(max(1, cb.size))
            add("<h2>Codebook usage</h2><p>\(cb.used) of \(cb.size) codes used (\(String(format: "%.1f", share)) %), perplexity \(String(format: "%.1f", cb.perplexity)). Codes by use, most used first:</p>")
            add(Chart.sortedCounts(cb.counts))
        }
        let g = s.groups
        add("<h2>Merge groups</h2><p>\(g.perRecord) tokens per record over \(g.patches) patches; groups by size (patches merged into one token), largest \(g.largest):</p>")
        add(Chart.bars(g.sizes.enumerated().dropFirst().map { ("\($0.offset)", $0.element) }))
        if !s.labels.isEmpty {
            add("<h2>Records per label</h2>")
            add(Chart.bars(s.labels.prefix(200).map { ("\($0.label)", $0.records) }))
        }
    }

    mutating func samples(_ c: TokenCache, images: String?, count: Int, notes: inout [String]) {
        guard count > 0, c.count > 0 else { return }
        add("<h2>Samples</h2><p>Merge groups over each record's crop (\(images == nil ? "over gray: give --images for the photos" : "re-made from the photos")), beside the token-size map.</p><div class=\"grid\">")
        let picks = Array(Set((0..<min(count, c.count)).map { $0 * c.count / min(count, c.count) })).sorted()
        let tmp = NSTemporaryDirectory() + "/mtok-report-\(getpid()).png"
        defer { try? FileManager.default.removeItem(atPath: tmp) }
        for i in picks {
            guard let record = try? c.record(at: i) else { continue }
            var picture: RGBImage
            do {
                picture = try ShowCommand.picture(of: record, in: c, source: images.map { $0 + "/" + record.id }, panel: 256)
            } catch let e as ShowCommand.Problem {
                notes.append(e.message + " (drawn over gray)")
                guard let gray = try? ShowCommand.picture(of: record, in: c, source: nil, panel: 256) else { continue }
                picture = gray
            } catch { continue }
            guard (try? PNGWriter.write(picture, to: tmp)) != nil, let png = FileManager.default.contents(atPath: tmp) else { continue }
            add("<figure><img alt=\"merge groups of \(Self.escape(record.id))\" width=\"\(picture.width)\" height=\"\(picture.height)\" src=\"data:image/png;base64,\(png.base64EncodedString())\"><figcaption>#\(i) \(Self.escape(record.id)) view \(record.view) label \(record.label)</figcaption></figure>")
        }
        add("</div>")
    }
}

/// Inline SVG charts, drawn by hand: a few rectangles and lines each.
enum Chart {
    static let width = 1000.0, height = 220.0, pad = 36.0

    static func number(_ v: Double) -> String { String(format: "%.4g", v) }

    /// Per channel: a bar from mean − std to mean + std, a line from min to max, a dot at the mean.
    static func channels(_ cs: [CacheStatistics.Channel]) -> String {
        guard !cs.isEmpty else { return "<p>No records.</p>" }
        let lo = cs.map { Swift.min($0.min, $0.mean - $0.std) }.min()!, hi = cs.map { Swift.max($0.max, $0.mean + $0.std) }.max()!
        let span = Swift.max(hi - lo, 1e-12)
        func y(_ v: Double) -> Double { height - pad - (v - lo) / span * (height - 2 * pad) }
        let step = (width - 2 * pad) / Double(cs.count)
        var svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(height))\" role=\"img\">"
        svg += "<line x1=\"\(pad)\" x2=\"\(width - pad)\" y1=\"\(y(0))\" y2=\"\(y(0))\" stroke=\"#bbb\"/>"
        svg += "<text x=\"2\" y=\"\(y(hi) + 4)\" font-size=\"10\">\(number(hi))</text><text x=\"2\" y=\"\(y(lo))\" font-size=\"10\">\(number(lo))</text>"
        for (i, c) in cs.enumerated() {
            let x = pad + (Double(i) + 0.5) * step, w = Swift.max(1, step * 0.6)
            svg += "<line x1=\"\(x)\" x2=\"\(x)\" y1=\"\(y(c.max))\" y2=\"\(y(c.min))\" stroke=\"#999\"/>"
            svg += "<rect x=\"\(x - w / 2)\" y=\"\(y(c.mean + c.std))\" width=\"\(w)\" height=\"\(Swift.max(1, y(c.mean - c.std) - y(c.mean + c.std)))\" fill=\"#4a7fd4\" opacity=\"0.75\"><title>channel \(i): mean \(number(c.mean)), std \(number(c.std)), min \(number(c.min)), max \(number(c.max))</title></rect>"
            svg += "<circle cx=\"\(x)\" cy=\"\(y(c.mean))\" r=\"2\" fill=\"#123\"/>"
            if cs.count <= 64 { svg += "<text x=\"\(x - 4)\" y=\"\(height - 8)\" font-size=\"9\">\(i)</text>" }
        }
        return svg + "</svg>"
    }

    /// Counts sorted from most to least, as a filled curve (one column per pixel at most).
    static func sortedCounts(_ counts: [Int]) -> String {
        let sorted = counts.sorted(by: >)
        guard let top = sorted.first, top > 0 else { return "<p>No codes.</p>" }
        let columns = Swift.min(sorted.count, Int(width - 2 * pad))
        var points = "\(pad),\(height - pad)"
        for c in 0..<columns {
            let v = sorted[c * sorted.count / columns]
            points += " \(pad + Double(c) / Double(columns) * (width - 2 * pad)),\(height - pad - Double(v) / Double(top) * (height - 2 * pad))"
        }
        points += " \(width - pad),\(height - pad)"
        return "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(height))\" role=\"img\"><polygon points=\"\(points)\" fill=\"#4a7fd4\" opacity=\"0.8\"/><text x=\"2\" y=\"\(pad)\" font-size=\"10\">\(top)</text><text x=\"\(pad)\" y=\"\(height - 8)\" font-size=\"10\">\(sorted.count) codes</text></svg>"
    }

    /// One bar per (label, value).
    static func bars(_ items: [(String, Int)]) -> String {
        guard let top = items.map(\.1).max(), top > 0 else { return "<p>None.</p>" }
        let step = (width - 2 * pad) / Double(items.count)
        var svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(height))\" role=\"img\"><text x=\"2\" y=\"\(pad)\" font-size=\"10\">\(top)</text>"
        for (i, (label, v)) in items.enumerated() {
            let h = Double(v) / Double(top) * (height - 2 * pad)
            svg += "<rect x=\"\(pad + Double(i) * step + step * 0.1)\" y=\"\(height - pad - h)\" width=\"\(Swift.max(1, step * 0.8))\" height=\"\(h)\" fill=\"#4a7fd4\"><title>\(Page.escape(label)): \(v)</title></rect>"
            if items.count <= 40 { svg += "<text x=\"\(pad + Double(i) * step + step * 0.2)\" y=\"\(height - 8)\" font-size=\"9\">\(Page.escape(label))</text>" }
        }
        return svg + "</svg>"
    }
}
