"""Deprecated import path, kept for one release: use lungtumor.io.dicom lungtumor.io.rtstruct lungtumor.io.importer."""

from lungtumor.io.dicom import *  # noqa: F403
from lungtumor.io.importer import *  # noqa: F403
from lungtumor.io.rtstruct import *  # noqa: F403
