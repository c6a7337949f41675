"""Deprecated import path, kept for one release: use lungtumor.preprocessing.recipe lungtumor.io.datasets lungtumor.preprocessing.store."""

from lungtumor.preprocessing.recipe import *  # noqa: F401,F403
from lungtumor.io.datasets import *  # noqa: F401,F403
from lungtumor.preprocessing.store import *  # noqa: F401,F403
