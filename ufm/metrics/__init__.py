"""Metrics as pure functions of arrays (features, classifier, labels): jit- and vmap-able,
stable at exact collapse. `nc_metrics` is the NC1-NC4 vocabulary every model's ``metrics``
shares; the regime-specific metrics live beside it, one module per regime."""

from ufm.metrics.nc import gram_gap, nc1_trace, nc_metrics
from ufm.metrics.regression import nrc_metrics

__all__ = ["gram_gap", "nc1_trace", "nc_metrics", "nrc_metrics"]
