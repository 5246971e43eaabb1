"""Class 2: every output location is checked before the work, and a set of outputs is written all-or-none.

Before, ``evaluate --json`` and ``calibrate --out`` into an unwritable place computed everything and then
crashed with a traceback, and a sibling output that is a directory left the other output half-written.
"""

from __future__ import annotations

import os

import pytest

import dtinterp.train.calibrate
import dtinterp.train.evaluate
from dtinterp.cli import main
from dtinterp.errors import OutputError
from dtinterp.outputs import check_output_dir, check_outputs, write_outputs
from tests.hardening.helpers import KEEP, assert_cli_refuses, assert_one_line, run_cli, snapshot


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a command gets as far as playing an episode."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("the work started before the outputs were checked")

    monkeypatch.setattr(dtinterp.train.evaluate, "evaluate", refuse)
    monkeypatch.setattr(dtinterp.train.calibrate, "calibrate", refuse)


def test_evaluate_json_into_an_unwritable_directory_fails_first(ckpt, unwritable_dir):
    """Through the CLI: one line naming --json, before the first episode (no traceback at the end)."""
    target = unwritable_dir / "results.json"
    proc = run_cli("evaluate", str(ckpt), "--rtg", "1", "--episodes", "1", "--json", str(target))
    assert_cli_refuses(proc, "--json", "not writable")
    assert "evaluate" not in proc.stdout  # no results table: nothing was computed
    assert not target.exists()


# case -> (command, its output arguments from (tmp dir, unwritable dir), what the one line must name)
CASES = {
    "evaluate --json unwritable": ("evaluate", lambda t, ro: ["--json", f"{ro}/r.json"], "--json"),
    "evaluate --json is a directory": ("evaluate", lambda t, ro: ["--json", f"{t}/dir.json"], "directory"),
    "evaluate --json missing directory": (
        "evaluate",
        lambda t, ro: ["--json", f"{t}/no/r.json"],
        "does not exist",
    ),
    "evaluate --gif unwritable": ("evaluate", lambda t, ro: ["--gif", f"{ro}/e.gif"], "--gif"),
    "evaluate --json and --gif clash": (
        "evaluate",
        lambda t, ro: ["--json", f"{t}/k.json", "--gif", f"{t}/k.json"],
        ".gif",
    ),
    "evaluate --json is /dev/null": ("evaluate", lambda t, ro: ["--json", "/dev/null"], ".json"),
    "calibrate --out unwritable": ("calibrate", lambda t, ro: ["--out", f"{ro}/c.html"], "--out"),
    "calibrate sibling JSON is a directory": (
        "calibrate",
        lambda t, ro: ["--out", f"{t}/sibling.html"],
        "JSON",
    ),
    "analyze --out unwritable": ("analyze", lambda t, ro: ["--out", f"{ro}/r.html"], "--out"),
    "analyze --json is a directory": (
        "analyze",
        lambda t, ro: ["--out", f"{t}/r.html", "--json", f"{t}/dir.json"],
        "--json",
    ),
    "collect --out unwritable": ("collect", lambda t, ro: ["--out", f"{ro}/d.npz"], "--out"),
    "collect --out is a directory": ("collect", lambda t, ro: ["--out", f"{t}/dir.json"], "directory"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_output_location_is_refused_before_the_work(
    ckpt, tmp_path, unwritable_dir, no_work, capsys, case
):
    command, outputs, needle = CASES[case]
    (tmp_path / "k.json").write_bytes(KEEP)
    (tmp_path / "dir.json").mkdir()
    (tmp_path / "sibling.json").mkdir()  # calibrate's JSON beside its --out
    model = {
        "evaluate": [str(ckpt), "--rtg", "1", "--episodes", "1"],
        "calibrate": [str(ckpt), "--episodes", "1", "--points", "2"],
        "analyze": [str(ckpt), "--analysis", "residual-norms", "--rollout", "--rtg", "1"],
        "collect": ["--env", "MiniGrid-Empty-5x5-v0", "--episodes", "1"],
    }[command]
    before = snapshot(tmp_path)
    code = main([command, *model, *outputs(tmp_path, unwritable_dir)])
    assert_one_line(code, capsys.readouterr().err, needle)
    assert snapshot(tmp_path) == before


def test_calibrate_writes_both_outputs_or_neither(ckpt, tmp_path, monkeypatch, capsys):
    """The JSON beside the report cannot be written: the report already on disk stays as it was."""
    report = tmp_path / "c.html"
    report.write_bytes(KEEP)
    real_replace = os.replace

    def failing_replace(src, dst, *args, **kwargs):
        if str(dst).endswith("c.json"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", failing_replace)
    code = main(
        ["calibrate", str(ckpt), "--points", "2", "--episodes", "1", "--num-envs", "1", "--out", str(report)]
    )
    assert_one_line(code, capsys.readouterr().err, "c.json", "No space left")
    assert report.read_bytes() == KEEP
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.html"]  # no temp files, no backups left


def test_write_outputs_undoes_earlier_renames(tmp_path, monkeypatch):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_bytes(KEEP)
    real_replace = os.replace

    def failing_replace(src, dst, *args, **kwargs):
        if str(dst) == str(second):
            raise OSError(5, "Input/output error")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OutputError, match="b.txt"):
        write_outputs([("--a", first, "new a"), ("--b", second, "new b")])
    assert first.read_bytes() == KEEP and not second.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_write_outputs_leaves_nothing_when_a_writer_fails(tmp_path):
    first = tmp_path / "a.txt"
    first.write_bytes(KEEP)

    def broken_writer(path):
        raise ValueError("cannot render")

    with pytest.raises(ValueError, match="cannot render"):
        write_outputs([("--a", first, "new a"), ("--b", tmp_path / "b.gif", broken_writer)])
    assert first.read_bytes() == KEEP
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_write_outputs_replaces_every_file_on_success(tmp_path):
    first = tmp_path / "a.txt"
    first.write_bytes(KEEP)
    write_outputs([("--a", first, "new a"), ("--b", tmp_path / "b.bin", b"\x00\x01")])
    assert first.read_text() == "new a" and (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin"]


def test_check_outputs_refuses_two_flags_naming_one_file(tmp_path):
    with pytest.raises(OutputError, match="--json and --out name the same file"):
        check_outputs({"--out": tmp_path / "x", "--json": tmp_path / "." / "x"})


def test_check_output_dir_for_a_run_directory(tmp_path, unwritable_dir):
    assert check_output_dir("--out", tmp_path / "new" / "run") == tmp_path / "new" / "run"  # created later
    (tmp_path / "file").write_bytes(KEEP)
    for path, needle in (
        (tmp_path / "file", "not a directory"),
        (tmp_path / "file" / "run", "not a directory"),
        (unwritable_dir / "run", "not writable"),
    ):
        with pytest.raises(OutputError, match=needle):
            check_output_dir("--out", path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "read-only"]
