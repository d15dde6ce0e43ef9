import ArgumentParser
import TensorCore

@main
struct MTok: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mtok",
        abstract: "Tokenize image datasets once into a verified MergeTok token cache, and serve it.",
        subcommands: [
            TokenizeCommand.self,
            MergeCommand.self,
            InfoCommand.self,
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

    static func main() {
        // OpenBLAS started its pool when the library loaded; mtok never uses it (BLAS).
        BLAS.stopIdleThreads()
        main(nil)
    }
}
