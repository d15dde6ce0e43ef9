import ArgumentParser

@main
struct MTok: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mtok",
        abstract: "Tokenize image datasets once into a verified MergeTok token cache, and serve it.",
        subcommands: [
            InfoCommand.self,
            GetCommand.self,
            VerifyCommand.self,
            SynthCacheCommand.self,
            StreamCommand.self,
        ]
    )
}
