"""Synthetic street sequences in the KITTI Odometry layout: the default training and test data."""

from .generate import SyntheticSequence, generate_dataset

__all__ = ["SyntheticSequence", "generate_dataset"]
