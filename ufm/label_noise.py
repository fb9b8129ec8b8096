"""Label noise under the UFM (docs/theory.md §6.4): the public namespace of the regime.

The model is `ufm.models.label_noise.NoisyUFM` (also `ufm.NoisyUFM`: a fraction of training
labels flipped, and a cost lam_M for memorising them), its exact optimum for the symmetric layout
`ufm.optimum(model)` with the margins of `ufm.theory.label_noise.noisy_margins`, and the
memorisation measures `ufm.metrics.label_noise.memorization_metrics` (arrays) or
``memorization_report(model, params)``.
"""

from ufm.metrics.label_noise import memorization_metrics
from ufm.models.label_noise import NoisyUFM, flip_labels, symmetric_noise
from ufm.theory.label_noise import noisy_margins

memorization_report = NoisyUFM.memorization_report  # (model, params) -> dict of arrays

__all__ = [
    "NoisyUFM",
    "flip_labels",
    "memorization_metrics",
    "memorization_report",
    "noisy_margins",
    "symmetric_noise",
]
