"""CT -> model slices: the lung region, the slice recipes (presets), the slice grid and the slice store (writer and reader)."""
