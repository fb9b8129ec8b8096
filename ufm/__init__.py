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
    multilabel,
    plot,
)
from ufm.metrics import nc_metrics
from ufm.models import (
    UFM,
    ClassLayout,
    DeepParams,
    ExtendedUFM,
    FixedETFUFM,
    LayerPeeled,
    MaxMarginUFM,
    Model,
    MultiLabelUFM,
    NoisyUFM,
    NormalizedUFM,
    Params,
    RegressionUFM,
    SupConUFM,
    leaf,
    static,
)
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
    # the model protocol
    "Model",
    "leaf",
    "static",
    "ClassLayout",
    # models
    "UFM",
    "LayerPeeled",
    "NormalizedUFM",
    "ExtendedUFM",
    "MultiLabelUFM",
    "NoisyUFM",
    "MaxMarginUFM",
    "RegressionUFM",
    "SupConUFM",
    "FixedETFUFM",
    "Params",
    "DeepParams",
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
    "multilabel",
    "plot",
]
__version__ = "0.1.0"
