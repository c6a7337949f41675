"""Deprecated import path, kept for one release: use lungtumor.model.checkpoint."""

from lungtumor.model.checkpoint import *  # noqa: F403
