"""ufm: a pure-JAX simulator of the unconstrained features model for Neural Collapse theory."""

from ufm import runtime  # first: one JAX CPU device per core, before anything starts JAX

# isort: split
from ufm import (
    dynamics,
    generalized,
    geometry,
    imbalance,
    label_noise,
    loop,
    losses,
    models,
    multilabel,
    plot,
)
from ufm.metrics import nc_metrics
from ufm.models import *  # noqa: F403 (the model protocol and every model: models.__all__)
from ufm.runtime import enable_compilation_cache
from ufm.solve import Result, solve
from ufm.sweep import Sweep, load_sweep, sweep
from ufm.theory import (
    Certificate,
    CheckReport,
    ConvexForm,
    NoCertificate,
    NoClosedForm,
    Optimum,
    certify,
    check,
    optimum,
)

__all__ = [
    *models.__all__,  # the model protocol and every model
    # solving, sweeping, checking
    "solve",
    "Result",
    "sweep",
    "Sweep",
    "load_sweep",
    "optimum",
    "Optimum",
    "NoClosedForm",
    "check",
    "CheckReport",
    "certify",
    "Certificate",
    "NoCertificate",
    "ConvexForm",
    "nc_metrics",
    "enable_compilation_cache",
    # modules
    "runtime",
    "dynamics",
    "generalized",
    "geometry",
    "imbalance",
    "label_noise",
    "loop",
    "losses",
    "models",
    "multilabel",
    "plot",
]
__version__ = "0.1.0"
