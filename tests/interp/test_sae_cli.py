"""``dtinterp sae train|info``: the whole pipeline from the shell (harvest, train, evaluate, splice, save), its
numbers equal to the library's, the output replaced all or nothing, and every bad input one line, exit 2,
nothing written. Successful runs and one refusal go through a subprocess (the ``dtinterp`` a user runs);
the other refusals run ``dtinterp.cli.main`` in-process to keep the ~4 s interpreter starts few."""

from __future__ import annotations

from pathlib import Path

import pytest

from dtinterp.cli import main
from dtinterp.data.collect import collect
from dtinterp.data.dataset import load_dataset, save_dataset
from dtinterp.interp.activation_store import harvest
from dtinterp.interp.sae import TopKSAE, evaluate_sae
from dtinterp.model.checkpoint import load_checkpoint
from envs import EnvSpec
from tests.hardening.helpers import assert_cli_refuses, assert_one_line, run_cli, snapshot, tiny_checkpoint

HOOK = "blocks.0.hook_resid_post"
TINY = ["--latents", "16", "--k", "4", "--steps", "5", "--batch-size", "32"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """A tiny checkpoint of Empty-5x5 (8-step episodes) and 6 episodes of its env."""
    root = tmp_path_factory.mktemp("sae_cli")
    tiny_checkpoint(root / "model")
    save_dataset(
        collect(EnvSpec("MiniGrid-Empty-5x5-v0", max_steps=8), 6, "mixed", 0, progress=False), root / "d.npz"
    )
    return root


def train_args(files: Path, out: Path, *extra: str) -> list[str]:
    return ["sae", "train", str(files / "model"), "--data", str(files / "d.npz"), "--hook", HOOK, *TINY,
            "--out", str(out), *extra]  # fmt: skip


def test_train_then_info_and_the_numbers_are_the_librarys(files, tmp_path):
    out = tmp_path / "runs" / "sae"  # parents are created
    proc = run_cli(*train_args(files, out, "--play", "2"))
    assert proc.returncode == 0, proc.stderr
    for needle in (
        "explained variance",
        "dead latents",
        "spliced in, 42 windows: loss",
        "2 episodes at target 1",
    ):
        assert needle in proc.stdout, proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["sae.json", "sae.safetensors"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind
    sae = TopKSAE.load(out)
    ckpt = load_checkpoint(files / "model")
    assert sae.cfg.hook == HOOK and (sae.cfg.n_latents, sae.cfg.k, sae.cfg.d_in) == (16, 4, 8)
    assert sae.cfg.model["weights_sha256"] == ckpt.weights_sha256 and sae.cfg.model["episodes"] == 6
    assert sae.log["train"]["steps"] == 5 and sae.metrics["spliced"]["episodes"] == 2
    # The saved metrics are evaluate_sae's on a fresh harvest of the same windows.
    ds = load_dataset(files / "d.npz")
    store = harvest(ckpt, ds, [HOOK], tmp_path / "store", max_windows=20_000, progress=False)
    m = evaluate_sae(sae, store)
    assert sae.metrics["mse"] == pytest.approx(m.mse, rel=1e-6) and sae.metrics["n_tokens"] == m.n_tokens
    assert sae.metrics["dead_share"] == m.dead_share

    info = run_cli("sae", "info", str(out))
    assert info.returncode == 0, info.stderr
    assert "16 latents of width 8, k = 4" in info.stdout and f"hook {HOOK}" in info.stdout


def test_force_replaces_an_earlier_sae_all_at_once(files, tmp_path, capsys):
    out = tmp_path / "sae"
    assert main(train_args(files, out)) == 0
    first = (out / "sae.safetensors").read_bytes()
    assert main(train_args(files, out, "--seed", "1", "--force")) == 0
    assert (out / "sae.safetensors").read_bytes() != first
    assert TopKSAE.load(out).log["train"]["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]  # no temporary or set-aside copy left
    capsys.readouterr()


CASES = {
    "missing data": (lambda f, t, ro: ["--data", str(t / "nope.npz")], "--data file", "does not exist"),
    "unknown hook": (lambda f, t, ro: ["--hook", "blocks.3.hook_resid_post"], "unknown hook 'blocks.3"),
    "k > latents": (lambda f, t, ro: ["--k", "17"], "--k 17 is more than --latents 16"),
    "out unwritable": (lambda f, t, ro: ["--out", str(ro / "sae")], "--out", "not writable"),
    "out not empty": (lambda f, t, ro: ["--out", str(t / "full")], "--out", "is not empty (--force"),
    "force on other files": (
        lambda f, t, ro: ["--out", str(t / "full"), "--force"],
        "holds files that are not an SAE's (notes.txt)",
    ),
    "too many episodes": (lambda f, t, ro: ["--episodes", "7"], "has 6 episodes; --episodes 7"),
    "no model": (lambda f, t, ro: [], "not a checkpoint directory"),
    "bad lr": (lambda f, t, ro: ["--lr", "0"], "--lr 0: expected a positive learning rate"),
    "latents out of range": (
        lambda f, t, ro: ["--latents", "0"],
        "--latents: expected an integer in 1..65536",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_writes_nothing(files, tmp_path, unwritable_dir, capsys, case):
    extra, *needles = CASES[case]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    argv = train_args(files, tmp_path / "sae", *extra(files, tmp_path, unwritable_dir))
    if case == "no model":
        argv[2] = str(tmp_path / "no-model")
    before = snapshot(tmp_path)
    code = main(argv)
    assert_one_line(code, capsys.readouterr().err, *needles)
    assert snapshot(tmp_path) == before


def test_a_refusal_through_the_real_cli(files, tmp_path):
    proc = run_cli(*train_args(files, tmp_path / "sae", "--hook", "blocks.0.attn.hook_pattern"))
    assert_cli_refuses(proc, "no single token position")
    assert not (tmp_path / "sae").exists()
    assert_cli_refuses(run_cli("sae", "info", str(tmp_path)), "cannot read the SAE")
