import Foundation

/// Helpers shared by the test targets: temporary directories and approximate equality.
public enum TestSupport {}
