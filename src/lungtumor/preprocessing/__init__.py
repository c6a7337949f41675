"""CT -> model slices: the slice recipe and the slice store (writer and reader)."""
