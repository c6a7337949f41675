"""lungtumor: lung tumour segmentation in chest CT.

The Python API is the product; the ``lungtumor`` command line only wraps it.
"""

from lungtumor.errors import LungTumorError
from lungtumor.io.volume import Volume
from lungtumor.io.nifti import read_nifti, write_nifti
from lungtumor.io.readers import read_volume

__all__ = ["LungTumorError", "Volume", "read_nifti", "read_volume", "write_nifti"]
__version__ = "0.1.0"
