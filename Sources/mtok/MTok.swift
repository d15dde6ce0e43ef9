import ArgumentParser

@main
struct MTok: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mtok",
        abstract: "Tokenize image datasets once into a verified MergeTok token cache, and serve it.",
        subcommands: [
            ModelCommand.self,
            EncodeCommand.self,
            BenchEncoderCommand.self,
        ]
    )
}
