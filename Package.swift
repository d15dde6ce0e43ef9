// swift-tools-version: 6.1
import PackageDescription

// Dependencies point one way: C system libraries → thin Swift owners of C handles →
// domain modules (format, store, images, tensors, encoder) → the `mtok` executable.
// The reader side (ShardFormat, LMDBCore, ZstdCore, ShardReader) never depends on image,
// BLAS or encoder code, so a trainer can link it alone.

let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
]

func systemLibrary(_ name: String, pkgConfig: String, apt: String) -> Target {
    .systemLibrary(name: name, pkgConfig: pkgConfig, providers: [.apt([apt])])
}

let package = Package(
    name: "mtok",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "mtok", targets: ["mtok"]),
        .library(name: "ShardReader", targets: ["ShardReader"]),
        .library(name: "ShardWriter", targets: ["ShardWriter"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.0"),
    ],
    targets: [
        // C libraries: headers and link flags only.
        systemLibrary("CLMDB", pkgConfig: "lmdb", apt: "liblmdb-dev"),
        systemLibrary("CZstd", pkgConfig: "libzstd", apt: "libzstd-dev"),
        systemLibrary("CJPEG", pkgConfig: "libjpeg", apt: "libjpeg-dev"),
        systemLibrary("CPNG", pkgConfig: "libpng", apt: "libpng-dev"),
        systemLibrary("COpenBLAS", pkgConfig: "openblas", apt: "libopenblas-dev"),
        .target(name: "CImageShims", dependencies: ["CJPEG", "CPNG"]),
        .target(name: "CReaderKernels"),

        // Tensor files: safetensors, .npy/.npz, 16-bit float conversion. Pure Swift.
        .target(name: "TensorFiles", swiftSettings: swiftSettings),

        // Store: format, C owners, reader, writer.
        .target(name: "ShardFormat", dependencies: ["TensorFiles", .product(name: "Crypto", package: "swift-crypto")],
                swiftSettings: swiftSettings),
        .target(name: "LMDBCore", dependencies: ["CLMDB"], swiftSettings: swiftSettings),
        .target(name: "ZstdCore", dependencies: ["CZstd"], swiftSettings: swiftSettings),
        .target(name: "ShardReader", dependencies: ["ShardFormat", "TensorFiles", "LMDBCore", "ZstdCore", "CReaderKernels",
                                                    .product(name: "Crypto", package: "swift-crypto")],
                swiftSettings: swiftSettings),
        .target(name: "ShardWriter", dependencies: ["ShardReader", "ShardFormat", "LMDBCore", "ZstdCore",
                                                    .product(name: "Crypto", package: "swift-crypto")],
                swiftSettings: swiftSettings),

        // Images and the encoder.
        .target(name: "ImageDecoding", dependencies: ["CImageShims"], swiftSettings: swiftSettings),
        .target(name: "TensorCore", dependencies: ["COpenBLAS"], swiftSettings: swiftSettings),
        .target(name: "EncoderModel", dependencies: ["TensorCore", "TensorFiles"], swiftSettings: swiftSettings),

        // The bulk pipeline: inputs → images → encoder → writer.
        .target(name: "TokenizePipeline",
                dependencies: ["ImageDecoding", "EncoderModel", "TensorCore", "ShardWriter", "ShardReader", "ShardFormat",
                               "TensorFiles", .product(name: "Crypto", package: "swift-crypto")],
                swiftSettings: swiftSettings),

        .executableTarget(
            name: "mtok",
            dependencies: ["TensorFiles", "ShardFormat", "ShardReader", "ShardWriter", "TokenizePipeline", "ImageDecoding", "TensorCore",
                           "EncoderModel", "ZstdCore", .product(name: "Crypto", package: "swift-crypto"),
                           .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: swiftSettings),

        // Tests: one target per library plus end-to-end CLI runs.
        .target(name: "TestSupport", path: "Tests/TestSupport", swiftSettings: swiftSettings),
        .testTarget(name: "ShardFormatTests", dependencies: ["ShardFormat", "TensorFiles", "TestSupport", .product(name: "Crypto", package: "swift-crypto")],
                    swiftSettings: swiftSettings),
        .testTarget(name: "ShardStoreTests", dependencies: ["ShardReader", "ShardWriter", "ShardFormat", "LMDBCore",
                                                            "ZstdCore", "TestSupport"],
                    swiftSettings: swiftSettings),
        .testTarget(name: "ImageDecodingTests", dependencies: ["ImageDecoding", "TensorFiles", "TestSupport"],
                    resources: [.copy("Fixtures")], swiftSettings: swiftSettings),
        .testTarget(name: "TensorCoreTests", dependencies: ["TensorCore"], swiftSettings: swiftSettings),
        .testTarget(name: "EncoderModelTests", dependencies: ["EncoderModel", "TensorCore", "TensorFiles", "TestSupport"],
                    resources: [.copy("Fixtures")], swiftSettings: swiftSettings),
        .testTarget(name: "CLITests", dependencies: ["ShardReader", "ShardFormat", "TensorFiles", "ImageDecoding", "TestSupport"],
                    swiftSettings: swiftSettings),
        .testTarget(name: "ReaderTests", dependencies: ["ShardReader", "ShardWriter", "ShardFormat", "TestSupport"],
                    swiftSettings: swiftSettings),
    ]
)
