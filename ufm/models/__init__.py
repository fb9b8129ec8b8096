"""The objectives: the regularised UFM and its relatives, each a pytree whose numeric
hyperparameters are leaves and whose structure (K, d, n, loss, ...) is static."""

from ufm.models._base import ClassLayout, Model, leaf, static
from ufm.models.extended import DeepParams, ExtendedUFM
from ufm.models.layer_peeled import LayerPeeled
from ufm.models.normalized import NormalizedUFM
from ufm.models.ufm import UFM, Params

__all__ = [
    "Model",
    "leaf",
    "static",
    "ClassLayout",
    "UFM",
    "Params",
    "LayerPeeled",
    "NormalizedUFM",
    "ExtendedUFM",
    "DeepParams",
]
