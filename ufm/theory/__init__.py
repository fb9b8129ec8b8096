"""Closed-form global optima of the models and the checks that compare a result to them.

`optimum(model)` dispatches on the model's type; each model family registers its closed forms in
its own submodule. `check(model, params)` compares any parameters with the optimum.
"""

from ufm.theory._base import CheckReport, NoClosedForm, Optimum, check, optimum
from ufm.theory import extended as _extended  # noqa: F401  (registers ExtendedUFM)
from ufm.theory import layer_peeled as _layer_peeled  # noqa: F401  (registers LayerPeeled)
from ufm.theory import normalized as _normalized  # noqa: F401  (registers NormalizedUFM)
from ufm.theory import regularized as _regularized  # noqa: F401  (registers UFM)

__all__ = ["CheckReport", "NoClosedForm", "Optimum", "check", "optimum"]
from ufm.theory import generalized as _generalized  # noqa: F401, E402  (K > d+1; after normalized)
