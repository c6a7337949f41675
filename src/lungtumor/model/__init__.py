"""The U-Net and the checkpoint format, shared by training and inference (no Lightning here)."""
