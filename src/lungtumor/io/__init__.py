"""Input and output: the Volume type, NIfTI, DICOM series, RTSTRUCT, dataset discovery."""
