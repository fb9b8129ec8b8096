"""`ufm demo`: prints the theory-vs-simulation table, writes the figure, exits 0 when gaps are
small; bad options fail with a message naming the parameter."""

import pytest

from ufm.cli import main


def test_demo_small_problem(tmp_path, capsys):
    out = tmp_path / "demo.png"
    code = main(["demo", "--K", "4", "--d", "5", "--n", "3", "--lam-W", "1e-2", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert out.stat().st_size > 10_000
    for row in ("objective", "nc1", "nc3", "nc4", "||W||_F/||H||_F"):
        assert row in text


def test_demo_zero_regime_has_no_figure(tmp_path, capsys):
    out = tmp_path / "zero.png"
    code = main(["demo", "--K", "3", "--d", "3", "--n", "2", "--lam-W", "1", "--lam-H", "1",
                 "--out", str(out)])  # fmt: skip
    assert code == 0 and not out.exists()
    assert "objective" in capsys.readouterr().out


def test_demo_bad_parameter_names_it(capsys):
    assert main(["demo", "--K", "1"]) == 2
    assert "K must be" in capsys.readouterr().err


def test_help_exits_cleanly(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--help"])
    assert e.value.code == 0
    assert "--lam-W" in capsys.readouterr().out
