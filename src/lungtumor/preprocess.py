"""Deprecated import path, kept for one release: use lungtumor.preprocessing.recipe lungtumor.io.datasets lungtumor.preprocessing.store."""

from lungtumor.io.datasets import *  # noqa: F403
from lungtumor.preprocessing.recipe import *  # noqa: F403
from lungtumor.preprocessing.store import *  # noqa: F403
