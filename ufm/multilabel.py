"""Multi-label classification with the pick-all-label CE (Li, Li, Wang & Qu, ICML 2024;
docs/theory.md §6.3): the public namespace of the regime.

The model is `ufm.models.multilabel.MultiLabelUFM` (also `ufm.MultiLabelUFM`), its exact optimum
`ufm.optimum(model)` with the margins of `ufm.theory.multilabel.multilabel_margins`, and the
multi-label NC measures `ufm.metrics.multilabel.tagwise_metrics` (arrays) or
``tagwise_geometry(model, params)`` (the model's metrics).
"""

from ufm.metrics.multilabel import multi_hot, tagwise_metrics
from ufm.models.multilabel import MultiLabelUFM, all_label_sets
from ufm.theory.multilabel import multilabel_margins

tagwise_geometry = MultiLabelUFM.metrics  # (model, params) -> dict: the model's metrics

__all__ = [
    "MultiLabelUFM",
    "all_label_sets",
    "multi_hot",
    "multilabel_margins",
    "tagwise_geometry",
    "tagwise_metrics",
]
