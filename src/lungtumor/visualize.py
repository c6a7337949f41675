"""Deprecated import path, kept for one release: use lungtumor.reporting.figures."""

from lungtumor.reporting.figures import *  # noqa: F403
