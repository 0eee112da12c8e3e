"""i2preg: image-to-point-cloud registration with Implicit Correspondence Learning (CVPR 2025).

    reg = i2preg.Registrator.from_pretrained()
    result = reg.register(image, points, K)
    result.pose  # (4, 4) camera-from-points

``Registrator`` and ``RegistrationResult`` load on first use, so ``import i2preg`` stays light.
"""

__version__ = "0.1.0"
__all__ = ["Registrator", "RegistrationResult"]


def __getattr__(name: str):
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
