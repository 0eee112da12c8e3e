"""i2preg: image-to-point-cloud registration with Implicit Correspondence Learning (CVPR 2025)."""

__version__ = "0.1.0"
