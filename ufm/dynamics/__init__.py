"""Training dynamics of neural collapse, simulated and checked against closed forms.

- `le_sde`: the locally elastic SDE of Zhang, Wang & Su (2021), its Euler–Maruyama simulation and
  a compiled sweep over the impacts (docs/theory.md §13).
- `flows`: gradient flow on any ufm model (Euler or RK4), with NC statistics recorded (§14).
- `central_path`: Han, Papyan & Donoho's central path of the MSE UFM (the classifier always the
  ridge optimum for the features, the renormalised features on a gradient flow), and how far plain
  gradient descent strays from it (§14.2).
- `laws`: the closed forms these are checked against: LE-ODE modes and margins, Mixon, Parshall &
  Pi's logistic eigenvalues (§14.1), the central-path law of the signal-to-noise singular values
  (§14.2), Ji et al.'s margin law (§14.3), and the starts on which they hold exactly.

The statistics recorded along the way are pure functions of arrays in `ufm.metrics.dynamics`.
"""

from ufm.dynamics.central_path import (
    CentralPathResult,
    central_path,
    central_path_gap,
    renormalize,
    ridge_classifier,
)
from ufm.dynamics.flows import FlowResult, flow_stats, gradient_flow
from ufm.dynamics.laws import (
    central_path_law,
    central_path_loss,
    central_path_omega,
    estimate_impacts,
    euler_factor,
    impact_integrals,
    le_ce_margin,
    le_etf_init,
    mixon_eigenvalues,
    mixon_init,
    mode_rates,
    ulpm_etf_init,
    ulpm_margin,
    ulpm_margin_law,
    ulpm_max_normalized_margin,
)
from ufm.dynamics.le_sde import LESDE, SDEResult, impacts, le_sweep, simulate
from ufm.metrics.dynamics import argmax_accuracy, ncc_accuracy, separable

__all__ = [
    # the locally elastic SDE
    "LESDE",
    "SDEResult",
    "impacts",
    "simulate",
    "le_sweep",
    "impact_integrals",
    "mode_rates",
    "euler_factor",
    "le_etf_init",
    "le_ce_margin",
    "estimate_impacts",
    "ncc_accuracy",
    "argmax_accuracy",
    "separable",
    # gradient flow on the UFM
    "FlowResult",
    "gradient_flow",
    "flow_stats",
    "mixon_init",
    "mixon_eigenvalues",
    "ulpm_etf_init",
    "ulpm_margin_law",
    "ulpm_margin",
    "ulpm_max_normalized_margin",
    # the central path
    "CentralPathResult",
    "central_path",
    "central_path_gap",
    "ridge_classifier",
    "renormalize",
    "central_path_law",
    "central_path_omega",
    "central_path_loss",
]
