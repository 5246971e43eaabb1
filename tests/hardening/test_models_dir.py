"""Class 6: ``dtinterp models --dir`` naming no directory is an error, not "no models" with exit 0."""

from __future__ import annotations

from dtinterp.cli import main
from tests.hardening.helpers import assert_cli_refuses, assert_one_line, run_cli


def test_a_missing_models_directory_is_an_error(tmp_path):
    proc = run_cli("models", "--dir", str(tmp_path / "nonexistent"))
    assert_cli_refuses(proc, "--dir", "nonexistent", "does not exist")
    assert proc.stdout == ""


def test_a_file_is_not_a_models_directory(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    assert_one_line(
        main(["models", "--dir", str(tmp_path / "notes.txt")]), capsys.readouterr().err, "not a directory"
    )


def test_an_empty_directory_holds_no_models(tmp_path, capsys):
    assert main(["models", "--dir", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("no models in") and captured.err == ""
