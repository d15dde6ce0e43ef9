import Testing
@testable import EncoderModel

/// Spec §3.1 and Appendix A.
@Suite struct MergeScheduleTests {
    struct Row: Sendable, CustomTestStringConvertible {
        let n, m, k, base: Int
        let r: [Int]
        let tokens: [Int]
        var testDescription: String { "N=\(n) M=\(m)" }
    }

    static let appendixA: [Row] = [
        Row(n: 1024, m: 448, k: 576, base: 38, r: [54, 53, 50, 46, 43, 39, 36, 32, 29, 25, 22, 19],
            tokens: [1025, 971, 918, 868, 822, 779, 740, 704, 672, 643, 618, 596]),
        Row(n: 1024, m: 624, k: 400, base: 52, r: [83, 73, 68, 63, 59, 54, 49, 44, 40, 35, 30, 26],
            tokens: [1025, 942, 869, 801, 738, 679, 625, 576, 532, 492, 457, 427]),
        Row(n: 1024, m: 768, k: 256, base: 64, r: [101, 90, 84, 78, 72, 66, 61, 55, 49, 43, 37, 32],
            tokens: [1025, 924, 834, 750, 672, 600, 534, 473, 418, 369, 326, 289]),
        Row(n: 1024, m: 828, k: 196, base: 69, r: [108, 96, 90, 84, 78, 72, 65, 59, 53, 47, 41, 35],
            tokens: [1025, 917, 821, 731, 647, 569, 497, 432, 373, 320, 273, 232]),
        Row(n: 256, m: 60, k: 196, base: 5, r: [12, 6, 6, 5, 5, 5, 4, 4, 4, 3, 3, 3],
            tokens: [257, 245, 239, 233, 228, 223, 218, 214, 210, 206, 203, 200]),
        Row(n: 256, m: 112, k: 144, base: 10, r: [12, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 5],
            tokens: [257, 245, 231, 218, 206, 195, 185, 176, 168, 161, 155, 150]),
        Row(n: 256, m: 156, k: 100, base: 13, r: [24, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7],
            tokens: [257, 233, 216, 200, 185, 171, 158, 146, 135, 125, 116, 108]),
        Row(n: 256, m: 192, k: 64, base: 16, r: [29, 22, 21, 19, 18, 16, 15, 13, 12, 10, 9, 8],
            tokens: [257, 228, 206, 185, 166, 148, 132, 117, 104, 92, 82, 73]),
        Row(n: 256, m: 220, k: 36, base: 19, r: [25, 26, 24, 23, 21, 19, 18, 16, 14, 13, 11, 10],
            tokens: [257, 232, 206, 182, 159, 138, 119, 101, 85, 71, 58, 47]),
    ]

    @Test(arguments: appendixA)
    func appendixATables(_ row: Row) {
        let s = MergeSchedule(tokens: row.n, merge: row.m, layers: 12)
        #expect(s.baseRate == row.base)
        #expect(s.planned == row.r)
        #expect(s.effective == row.r, "no layer is clamped in these configs")
        #expect(s.tokensIn == row.tokens)
        #expect(row.n - s.effective.reduce(0, +) == row.k)
    }

    @Test func truncationInBinary64() {
        #expect(MergeSchedule.sched(layers: 12, rate: 10).last == 5)
    }

    @Test func noMergeIsAllZeros() {
        let s = MergeSchedule(tokens: 256, merge: 0, layers: 12)
        #expect(s.baseRate == 0)
        #expect(s.effective == Array(repeating: 0, count: 12))
    }

    @Test func tinyScheduleUsesEqualGapAndRemainder() {
        let s = MergeSchedule(tokens: 256, merge: 87, layers: 2)
        #expect(s.baseRate == 43)
        #expect(MergeSchedule.sched(layers: 2, rate: 43) == [64, 22])
        #expect(s.planned == [65, 22])
        #expect(s.tokensIn == [257, 192])
    }

    @Test func tinyWithM88IsRejected() {
        var config = EncoderPresets.named("tiny")!.config
        config.mergeNum = 88
        #expect(throws: EncoderError.self) { try config.validate() }
        do {
            try config.validate()
        } catch let EncoderError.invalidConfig(problems) {
            #expect(problems.contains { $0.contains("K = 168") })
        } catch {
            Issue.record("unexpected error \(error)")
        }
    }

    @Test(arguments: EncoderPresets.all.map(\.name))
    func everyPresetIsAccepted(_ name: String) throws {
        let config = EncoderPresets.named(name)!.config
        try config.validate()
        let k = config.keptTokens
        let m = Int(Double(k).squareRoot())
        #expect(m * m == k)
    }
}
