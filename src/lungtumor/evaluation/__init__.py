"""Per-case metrics and folder evaluation."""
