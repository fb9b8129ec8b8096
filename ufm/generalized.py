"""More classes than dimensions, K > d+1 (Jiang et al., ICML 2024, "generalized neural collapse";
docs/theory.md §7): the public namespace of the regime.

The metrics (one-vs-rest distance, hyperspherical energy, feature alignment) are in
`ufm.metrics.generalized`, the exactly checkable configurations (the regular K-gon, the
cross-polytope) in `ufm.theory.generalized`.
"""

from ufm.metrics.generalized import (
    gnc_metrics,
    hyperspherical_energy,
    min_pairwise_distance,
    one_vs_rest_distances,
)
from ufm.theory.generalized import (
    cross_polytope,
    cross_polytope_value,
    polygon,
    polygon_ufm_scale,
    sphere_polygon_value,
)

__all__ = [
    "cross_polytope",
    "cross_polytope_value",
    "gnc_metrics",
    "hyperspherical_energy",
    "min_pairwise_distance",
    "one_vs_rest_distances",
    "polygon",
    "polygon_ufm_scale",
    "sphere_polygon_value",
]
