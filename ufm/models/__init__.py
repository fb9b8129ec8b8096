"""The objectives: the regularised UFM and its relatives, each a pytree whose numeric
hyperparameters are leaves and whose structure (K, d, n, loss, ...) is static."""

from ufm.models._base import ClassLayout, Model, leaf, static
from ufm.models.extended import DeepParams, ExtendedUFM
from ufm.models.fixed_etf import FixedETFUFM
from ufm.models.label_noise import NoisyUFM
from ufm.models.layer_peeled import LayerPeeled
from ufm.models.max_margin import MaxMarginParams, MaxMarginUFM
from ufm.models.multilabel import MultiLabelUFM
from ufm.models.normalized import NormalizedUFM
from ufm.models.regression import RegressionUFM
from ufm.models.supcon import SupConUFM
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
    "MultiLabelUFM",
    "NoisyUFM",
    "MaxMarginUFM",
    "MaxMarginParams",
    "RegressionUFM",
    "SupConUFM",
    "FixedETFUFM",
]
