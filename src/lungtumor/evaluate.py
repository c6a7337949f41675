"""Deprecated import path, kept for one release: use lungtumor.evaluation.evaluate."""

from lungtumor.evaluation.evaluate import *  # noqa: F403
