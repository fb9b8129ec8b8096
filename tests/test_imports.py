"""`import ufm` stays light: it must not load matplotlib (figures import pyplot only when drawn).

Run in a fresh interpreter, since the test session itself may already have imported matplotlib."""

import subprocess
import sys


def test_import_ufm_loads_no_matplotlib():
    code = "import sys, ufm; print(sorted(m for m in sys.modules if m.startswith('matplotlib')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_plot_functions_still_draw_after_lazy_import():
    code = (
        "import matplotlib; matplotlib.use('Agg'); import numpy as np, ufm; "
        "fig = ufm.plot.gram_vs_etf(np.eye(3)); print(type(fig).__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "Figure"
