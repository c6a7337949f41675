"""Synthetic Task06-shaped chest CT (no download): anatomy, vessels, tumours, rendering, dataset."""

from lungtumor.phantom.dataset import write_phantom_dataset

__all__ = ["write_phantom_dataset"]
