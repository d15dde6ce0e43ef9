enum ShardWriterPlaceholder {}
