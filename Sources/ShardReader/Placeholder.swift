enum ShardReaderPlaceholder {}
