"""ufm: a pure-JAX simulator of the unconstrained features model for Neural Collapse theory."""

from ufm import dynamics, geometry, losses, plot
from ufm.metrics import nc_metrics
from ufm.models import UFM, Params
from ufm.models.extended import DeepParams, ExtendedUFM
from ufm.models.layer_peeled import LayerPeeled
from ufm.models.normalized import NormalizedUFM
from ufm.solve import Result, solve
from ufm.sweep import Sweep, load_sweep, sweep
from ufm.theory import CheckReport, NoClosedForm, Optimum, check, optimum
from ufm import generalized, imbalance, label_noise, multilabel  # noqa: E402  (issue 5 regimes)
from ufm.label_noise import NoisyUFM  # noqa: E402
from ufm.multilabel import MultiLabelUFM  # noqa: E402

__all__ = [
    "UFM",
    "CheckReport",
    "NoClosedForm",
    "Optimum",
    "Params",
    "Result",
    "check",
    "geometry",
    "losses",
    "nc_metrics",
    "optimum",
    "plot",
    "solve",
]
__all__ += ["DeepParams", "ExtendedUFM", "LayerPeeled", "NormalizedUFM"]
__all__ += ["dynamics"]
__all__ += ["Sweep", "load_sweep", "sweep"]
__all__ += ["MultiLabelUFM", "NoisyUFM", "generalized", "imbalance", "label_noise", "multilabel"]
__version__ = "0.1.0"
