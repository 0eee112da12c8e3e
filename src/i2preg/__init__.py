"""i2preg: image-to-point-cloud registration with Implicit Correspondence Learning (CVPR 2025).

    image, points, K, pose = i2preg.load_sample()       # a synthetic frame that ships with the package
    reg = i2preg.Registrator.from_pretrained()
    result = reg.register(image, points, K)
    result.pose  # (4, 4) camera-from-points

The public names load on first use, so ``import i2preg`` stays light. On Linux it sets glibc's malloc to keep
freed memory for reuse (``memory.keep_freed_memory``; ``I2PREG_KEEP_FREED_MEMORY=0`` leaves it as it is).
"""

from . import memory

memory.keep_freed_memory()

__version__ = "0.1.0"
__all__ = ["Registrator", "RegistrationResult", "load_sample", "SamplePair"]


def __getattr__(name: str):
    if name in ("Registrator", "RegistrationResult"):
        from . import api

        return getattr(api, name)
    if name in ("load_sample", "SamplePair"):
        from . import sample

        return getattr(sample, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
