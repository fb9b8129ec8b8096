"""`ufm demo`: prints the theory-vs-simulation table, writes the figure, exits 0 when gaps are
small; bad options fail with a message naming the parameter; the persistent compilation cache is
on for the time of a command (off with --no-compile-cache)."""

import jax
import pytest

from ufm.cli import main


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    """The commands' compilation cache goes to a temporary directory, never the user's."""
    monkeypatch.setenv("UFM_CACHE_DIR", str(tmp_path / "jax-cache"))


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


RUN_TOML = """
x64 = true
[model]
type = "UFM"
K = 3
d = 4
n = 2
[grid]
lam_W = 1e-2
lam_H = {lam_H}
[sweep]
seeds = 2
steps = 200
out = "run.npz"
"""


def test_run_then_check_compares_with_theory(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text(RUN_TOML.format(lam_H="5e-3"))
    assert main(["run", str(cfg)]) == 0
    assert (tmp_path / "run.npz").exists()
    capsys.readouterr()
    assert main(["check", str(tmp_path / "run.npz")]) == 0
    text = capsys.readouterr().out
    assert text.count("objective") == 2  # one table per seed
    assert "||W||_F/||H||_F" in text


def test_compilation_cache_is_on_for_a_command_and_can_be_turned_off(tmp_path, capsys):
    """A command fills the cache directory and leaves JAX's settings as they were;
    --no-compile-cache writes nothing."""
    cfg = tmp_path / "run.toml"
    cfg.write_text(RUN_TOML.format(lam_H="2e-3").replace("d = 4", "d = 6"))  # not compiled yet
    before = jax.config.jax_compilation_cache_dir
    assert main(["run", str(cfg), "--cache-dir", str(tmp_path / "on")]) == 0
    assert any((tmp_path / "on").iterdir())
    assert jax.config.jax_compilation_cache_dir == before
    assert main(["run", str(cfg), "--no-compile-cache", "--cache-dir", str(tmp_path / "off")]) == 0
    assert not (tmp_path / "off").exists()


def test_run_refuses_a_grid_axis_and_names_it(tmp_path, capsys):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(RUN_TOML.format(lam_H="[1e-3, 1e-2]"))
    assert main(["run", str(cfg)]) == 2
    assert "'lam_H'" in capsys.readouterr().err


def test_check_of_a_missing_file_fails_cleanly(tmp_path, capsys):
    assert main(["check", str(tmp_path / "nope.npz")]) == 2
    assert "nope.npz" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["run", "sweep", "check", "bench"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0 and "usage" in capsys.readouterr().out
