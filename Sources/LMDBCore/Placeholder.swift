enum LMDBCorePlaceholder {}
