"""Closed-form global optima of the models and the checks that compare a result to them.

`optimum(model)` dispatches on the model's type; each model family registers its closed forms in
its own submodule, and importing the submodule registers them. `check(model, params)` compares any
parameters with the optimum.
"""

from ufm.theory import (
    extended,
    fixed_etf,
    generalized,
    imbalance,
    label_noise,
    layer_peeled,
    max_margin,
    multilabel,
    normalized,
    regression,
    regularized,
    supcon,
)
from ufm.theory._base import CheckReport, NoClosedForm, Optimum, check, optimum
from ufm.theory.certify import Certificate, ConvexForm, NoCertificate, certify

__all__ = ["CheckReport", "NoClosedForm", "Optimum", "check", "optimum"]
__all__ += ["extended", "generalized", "imbalance", "label_noise", "layer_peeled", "multilabel"]
__all__ += ["normalized", "regularized"]
__all__ += ["fixed_etf", "max_margin", "regression", "supcon"]
__all__ += ["Certificate", "ConvexForm", "NoCertificate", "certify"]
