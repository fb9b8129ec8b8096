"""ufm: a pure-JAX simulator of the unconstrained features model for Neural Collapse theory."""

from ufm import geometry, losses
from ufm.models import UFM, Params

__all__ = ["UFM", "Params", "geometry", "losses"]
__version__ = "0.1.0"
