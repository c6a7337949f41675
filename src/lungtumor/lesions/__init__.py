"""The lesion: instances (one connectivity), the RECIST frame and axes, the side, the report files; lesions of two visits paired and their RECIST 1.1 response."""
