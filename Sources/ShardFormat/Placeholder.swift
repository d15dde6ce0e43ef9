enum ShardFormatPlaceholder {}
