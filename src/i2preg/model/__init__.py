"""The ICL network (GPDM, ICLM, PRM) and its encoders."""

from .icl import ICL

__all__ = ["ICL"]
