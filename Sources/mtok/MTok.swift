import ArgumentParser
import EncoderModel
import ShardFormat
import TensorCore

@main
struct MTok: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mtok",
        abstract: "Tokenize image datasets once into a verified MergeTok token cache, and serve it.",
        version: MTok.version,
        subcommands: [
            TokenizeCommand.self,
            MergeCommand.self,
            InfoCommand.self,
            StatsCommand.self,
            ShowCommand.self,
            ReportCommand.self,
            GetCommand.self,
            VerifyCommand.self,
            SynthCacheCommand.self,
            BenchStoreCommand.self,
            PreprocessCommand.self,
            BenchPreprocessCommand.self,
            ModelCommand.self,
            EncodeCommand.self,
            BenchEncoderCommand.self,
            StreamCommand.self,
        ]
    )

    /// The program's version, with the cache format it writes and the encoder arithmetic it
    /// computes (records of one revision are bit-identical across versions).
    static let version = "mtok 0.9.0 (cache format \(Manifest.currentVersion), encoder arithmetic \(MergeTokEncoder.arithmeticRevision))"

    static func main() {
        // OpenBLAS started its pool when the library loaded; mtok never uses it (BLAS).
        BLAS.stopIdleThreads()
        main(nil)
    }
}
