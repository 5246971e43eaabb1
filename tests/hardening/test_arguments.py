"""Class 5: every argument error of every sub-command is one line ``dtinterp: error: ...``, exit 2.

Before, argparse printed its multi-line usage block with a ``dtinterp collect: error:`` prefix, while the
README promises one line. The line names the sub-command and the argument.
"""

from __future__ import annotations

import argparse
from importlib.metadata import EntryPoint

import pytest

import dtinterp.cli
from dtinterp.cli import COMMANDS_GROUP, Command, main
from tests.hardening.helpers import assert_cli_refuses, assert_one_line, run_cli


def test_collect_argument_error_through_the_cli(tmp_path):
    proc = run_cli(
        "collect", "--env", "MiniGrid-Empty-5x5-v0", "--episodes", "many", "--out", str(tmp_path / "d.npz")
    )
    line = assert_cli_refuses(proc, "collect: argument --episodes", "'many'")
    assert line.startswith("dtinterp: error: collect: ") and "usage" not in proc.stderr
    assert proc.stdout == "" and list(tmp_path.iterdir()) == []


# argv -> what the one line must name
CASES = {
    "no command": ([], "COMMAND"),
    "unknown command": (["colect"], "invalid choice: 'colect'"),
    "unknown top-level flag": (["--verbose", "models"], "unrecognized arguments: --verbose"),
    "collect missing --env": (["collect", "--episodes", "1", "--out", "d.npz"], "collect: the following arguments are required: --env"),
    "collect --episodes not a number": (["collect", "--env", "E", "--episodes", "x", "--out", "d.npz"], "collect: argument --episodes"),
    "collect --episodes zero": (["collect", "--env", "E", "--episodes", "0", "--out", "d.npz"], "collect: argument --episodes"),
    "collect --policy unknown": (["collect", "--env", "E", "--episodes", "1", "--out", "d.npz", "--policy", "best"], "argument --policy"),
    "collect --seed negative": (["collect", "--env", "E", "--episodes", "1", "--out", "d.npz", "--seed", "-1"], "argument --seed"),
    "collect --view-size text": (["collect", "--env", "E", "--episodes", "1", "--out", "d.npz", "--view-size", "big"], "argument --view-size"),
    "collect unknown flag": (["collect", "--env", "E", "--episodes", "1", "--out", "d.npz", "--fast"], "unrecognized arguments: --fast"),
    "data without sub-command": (["data"], "data: the following arguments are required: SUBCOMMAND"),
    "data unknown sub-command": (["data", "show"], "data: argument SUBCOMMAND: invalid choice: 'show'"),
    "data info without file": (["data", "info"], "data info: the following arguments are required: file"),
    "train missing --out": (["train", "--data", "d.npz"], "train: the following arguments are required: --out"),
    "train --steps zero": (["train", "--data", "d.npz", "--out", "r", "--steps", "0"], "train: argument --steps"),
    "train --logger unknown": (["train", "--data", "d.npz", "--out", "r", "--logger", "mlflow"], "argument --logger"),
    "evaluate missing --rtg": (["evaluate", "m"], "evaluate: the following arguments are required: --rtg"),
    "evaluate --rtg text": (["evaluate", "m", "--rtg", "high"], "evaluate: argument --rtg"),
    "evaluate --num-envs zero": (["evaluate", "m", "--rtg", "1", "--num-envs", "0"], "argument --num-envs"),
    "calibrate missing --out": (["calibrate", "m"], "calibrate: the following arguments are required: --out"),
    "calibrate --points text": (["calibrate", "m", "--out", "c.html", "--points", "many"], "calibrate: argument --points"),
    "calibrate --min nan": (["calibrate", "m", "--out", "c.html", "--min", "nan"], "calibrate: argument --min"),
    "models --dir without value": (["models", "--dir"], "models: argument --dir: expected one argument"),
    "models stray argument": (["models", "extra"], "unrecognized arguments: extra"),
    "analyze --step negative": (["analyze", "m", "--step", "-2"], "analyze: argument --step"),
    "analyze --episodes zero": (["analyze", "m", "--episodes", "0"], "analyze: argument --episodes"),
    "analyze two models": (["analyze", "m", "n"], "unrecognized arguments: n"),
    "app --port text": (["app", "--port", "http"], "app: argument --port"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_every_argument_error_is_one_line(tmp_path, monkeypatch, capsys, case):
    monkeypatch.chdir(tmp_path)
    argv, needle = CASES[case]
    line = assert_one_line(main(argv), capsys.readouterr().err, needle)
    assert "usage:" not in line
    assert list(tmp_path.iterdir()) == []


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=int, required=True)
    nested = p.add_subparsers(dest="what", required=True)
    nested.add_parser("deep").add_argument("--depth", type=int)


#: A command another package contributes through the entry-point group.
FAKE = Command(name="fake", help="a contributed command", add_arguments=_add_arguments, handler="os:getcwd")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["fake", "deep"], "fake: the following arguments are required: --size"),
        (["fake", "--size", "big", "deep"], "fake: argument --size"),
        (["fake", "--size", "1", "deep", "--depth", "x"], "fake deep: argument --depth"),
    ],
)
def test_contributed_commands_get_the_same_one_line_errors(monkeypatch, capsys, argv, needle):
    ep = EntryPoint("fake", f"{__name__}:FAKE", COMMANDS_GROUP)
    monkeypatch.setattr(dtinterp.cli, "contributed_commands", lambda: {"fake": ep})
    assert_one_line(main(argv), capsys.readouterr().err, needle)


def test_help_still_prints_and_exits_0(capsys):
    assert main(["collect", "--help"]) == 0
    assert "usage: dtinterp collect" in capsys.readouterr().out
