"""The lesion: instances (one connectivity), the RECIST frame and axes, the side, the report files."""
