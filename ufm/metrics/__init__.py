"""Metrics as pure functions of arrays (features, classifier, labels): jit- and vmap-able,
stable at exact collapse. `nc_metrics` is the NC1-NC4 vocabulary every model's ``metrics``
shares; the regime-specific metrics live beside it, one module per regime."""

from ufm.metrics.nc import nc_metrics

__all__ = ["nc_metrics"]
