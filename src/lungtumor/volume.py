"""Deprecated import path, kept for one release: use lungtumor.io.volume lungtumor.io.nifti lungtumor.io.readers."""

from lungtumor.io.nifti import *  # noqa: F403
from lungtumor.io.readers import *  # noqa: F403
from lungtumor.io.volume import *  # noqa: F403
