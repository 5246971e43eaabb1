"""``dtinterp sae train|info``: train a TopK sparse autoencoder on a model's activations from the shell.

``train MODEL --data F --hook H --out DIR`` runs the whole pipeline of :mod:`dtinterp.interp.sae` in one
command: it harvests the activations at ``--hook`` and the tokens of ``--token`` over windows of the first
``--episodes`` episodes of ``--data`` (ending at every step, thinned to ``--max-windows``) into a temporary
:class:`~dtinterp.interp.activation_store.ActivationStore`, trains the SAE, evaluates it on the same tokens
(MSE, explained variance, L0, dead latents), splices it into the model on the dataset's windows (the change
in loss, KL and greedy agreement, :func:`~dtinterp.interp.effects.window_effect`) and, with ``--play N``,
plays ``N`` seeded episodes with and without it (success and return,
:func:`~dtinterp.interp.effects.played_effect`). ``DIR`` then holds ``sae.safetensors`` + ``sae.json``
(config, training log, metrics, provenance: the model's weights digest, the dataset's path and
fingerprint), ready for ``sae:DIR#F`` in the feature dashboard and the Play tab.

Every argument is checked before any work (the output directory first: an existing non-empty ``DIR`` is
refused unless ``--force``, which replaces only an earlier SAE's files), and nothing is written unless the
whole run succeeds: the SAE is written to a temporary directory beside ``DIR`` and renamed into place.
``info DIR`` prints what an SAE directory holds. The arguments are declared in :mod:`dtinterp.cli`; the
work (torch, the model) is imported when the command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dtinterp.interp.sae import TopKSAE

#: The files an SAE directory holds (``--force`` replaces a directory holding only these).
SAE_FILES = ("sae.safetensors", "sae.json")
#: Windows the spliced-in loss is measured on at most.
EFFECT_WINDOWS = 2048


def _status(msg: str) -> None:
    print(f"dtinterp sae: {msg}", file=sys.stderr, flush=True)


def cmd_sae(args: argparse.Namespace) -> int:
    """Run ``dtinterp sae train|info``; user errors are one-line :class:`~dtinterp.errors.DtinterpError` s."""
    if args.sae_command == "info":
        from dtinterp.interp.sae import TopKSAE

        print(format_info(TopKSAE.load(args.directory), Path(args.directory)))
        return 0
    return _train(args)


def check_out_dir(path: str, force: bool) -> Path:
    """``--out`` as a Path if an SAE may be written there; else a one-line error (nothing is touched)."""
    from dtinterp.errors import OutputError
    from dtinterp.outputs import check_output_dir

    out = check_output_dir("--out", path)
    if out.is_dir():
        names = {p.name for p in out.iterdir()}
        if names and not force:
            raise OutputError(f"--out {path!r} is not empty (--force replaces the SAE in it)")
        if names - set(SAE_FILES):
            raise OutputError(
                f"--out {path!r} holds files that are not an SAE's ({sorted(names - set(SAE_FILES))[0]}): "
                "choose another directory"
            )
    return out


def _check_args(args: argparse.Namespace) -> Path:
    """Every check that needs neither the model nor the data; returns the checked output directory."""
    from dtinterp.errors import ConfigError

    if args.k > args.latents:
        raise ConfigError(
            f"--k {args.k} is more than --latents {args.latents}: TopK keeps at most every latent"
        )
    if not args.lr > 0:
        raise ConfigError(f"--lr {args.lr:g}: expected a positive learning rate")
    if not Path(args.data).is_file():
        raise ConfigError(f"--data file {args.data!r} does not exist")
    return check_out_dir(args.out, args.force)


def _train(args: argparse.Namespace) -> int:
    from dtinterp.data.dataset import load_dataset
    from dtinterp.data.episode import dataset_windows
    from dtinterp.errors import EpisodeError
    from dtinterp.interp.activation_store import check_hooks, harvest
    from dtinterp.interp.effects import played_effect, window_effect
    from dtinterp.interp.sae import SAETrainConfig, evaluate_sae, train_sae
    from dtinterp.limits import check_rtg
    from dtinterp.model.checkpoint import load_checkpoint
    from dtinterp.model.shipped import resolve_model

    out = _check_args(args)
    ds = load_dataset(args.data)
    n_eps = ds.n_episodes if args.episodes is None else args.episodes
    if n_eps > ds.n_episodes:
        raise EpisodeError(
            f"--data {args.data!r} has {ds.n_episodes} episodes; --episodes {n_eps} is too many"
        )
    ckpt = load_checkpoint(resolve_model(args.model))
    hook = check_hooks(ckpt, [args.hook])[0]
    ckpt.check_fits(ds.env_spec, tuple(ds.obs.shape[1:3]), where=f"--data {args.data!r}")
    if args.play:
        check_rtg(args.rtg, "--rtg", ckpt.rtg_scale)
        if ckpt.env_spec is None:
            raise EpisodeError("--play: the model records no env to play in")
    episodes = list(range(n_eps))
    t0 = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="dtinterp-sae-store-") as tmp:
        _status(f"harvesting {hook} at the {args.token} tokens of {n_eps} episode(s) of {args.data}")
        store = harvest(
            ckpt, ds, [hook], tmp, token_kind=args.token, episodes=episodes, max_windows=args.max_windows
        )
        _status(
            f"{store.n_tokens} tokens of {store.n_windows} windows; training {args.latents} latents, k={args.k}"
        )
        train = SAETrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
        sae = train_sae(store, args.latents, args.k, train, hook=hook)
        _status("evaluating")
        metrics = evaluate_sae(sae, store)
        n_tokens, n_windows = store.n_tokens, store.n_windows

    inputs, _ = dataset_windows(
        ds, episodes, ckpt, min(EFFECT_WINDOWS, args.max_windows), f"--data {args.data!r}"
    )
    effect = window_effect(ckpt.model, inputs, sae.splice_hooks())
    spliced: dict[str, Any] = {
        "windows": inputs.batch_size,
        "tokens": effect.n_tokens,
        "loss_clean": effect.loss_clean,
        "loss_spliced": effect.loss_hooked,
        "kl": effect.kl,
        "agreement": effect.agreement,
    }
    if args.play:
        _status(f"playing {args.play} episode(s) at target {args.rtg:g} with and without the SAE")
        seeds = range(args.play_seed, args.play_seed + args.play)
        played = played_effect(ckpt, sae.splice_hooks(), seeds, args.rtg)
        spliced |= {
            "episodes": args.play,
            "seeds": [args.play_seed, args.play_seed + args.play - 1],
            "target": args.rtg,
            "success_clean": played.clean.success_rate,
            "success_spliced": played.hooked.success_rate,
            "return_clean": float(played.clean.returns.mean()),
            "return_spliced": float(played.hooked.returns.mean()),
        }
    sae.cfg.model = {
        "name": ckpt.name,
        "weights_sha256": ckpt.weights_sha256,
        "dataset": str(Path(args.data).resolve()),
        "dataset_sha256": ds.fingerprint()["sha256"],
        "episodes": n_eps,
        "windows": n_windows,
    }
    sae.metrics = {**metrics.summary(), "spliced": spliced}
    write_sae(sae, out)
    curve = sae.log.get("curve") or [{}]
    print(f"wrote {out}")
    print(format_metrics(sae, n_tokens, time.perf_counter() - t0, float(curve[-1].get("loss", math.nan))))
    return 0


def write_sae(sae: TopKSAE, out: Path) -> None:
    """Write ``sae`` into ``out`` all or nothing: saved in a temporary directory beside it, then renamed
    over it (an earlier SAE there is set aside first and restored if the rename fails)."""
    from dtinterp.errors import OutputError

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    backup = None
    try:
        sae.save(tmp)
        os.chmod(tmp, 0o777 & ~_umask())
        if out.exists():
            backup = out.with_name(f".{out.name}.{os.getpid()}.old")
            os.replace(out, backup)
        os.replace(tmp, out)
    except OSError as exc:
        if backup is not None and not out.exists():
            with contextlib.suppress(OSError):
                os.replace(backup, out)
            backup = None
        raise OutputError(f"cannot write --out {str(out)!r}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def format_metrics(sae: TopKSAE, n_tokens: int, seconds: float, final_loss: float) -> str:
    """The numbers ``train`` prints: reconstruction, sparsity, and the model with the SAE spliced in."""
    m = sae.metrics
    lines = [
        f"{n_tokens} tokens of {sae.cfg.hook}, {seconds:.0f} s end to end (training {sae.log.get('seconds', 0):.0f} s, "
        f"final loss {final_loss:.4f}, normalised MSE)",
        f"reconstruction: MSE {m['mse']:.4g} per element, explained variance {m['explained_variance']:.4f}",
        f"sparsity: L0 {m['l0']:.2f} of k={sae.cfg.k}, dead latents {m['dead_share']:.1%} of {sae.cfg.n_latents}",
    ]
    s = m.get("spliced") or {}
    if s:
        lines.append(
            f"spliced in, {s['windows']} windows: loss {s['loss_clean']:.4f} -> {s['loss_spliced']:.4f} nats "
            f"({s['loss_spliced'] - s['loss_clean']:+.4f}), KL {s['kl']:.4f}, greedy action unchanged "
            f"{s['agreement']:.1%}"
        )
    if "success_clean" in s:
        lines.append(
            f"spliced in, {s['episodes']} episodes at target {s['target']:g}: success "
            f"{s['success_clean']:.1%} -> {s['success_spliced']:.1%}, mean return {s['return_clean']:.3f} -> "
            f"{s['return_spliced']:.3f}"
        )
    return "\n".join(lines)


def format_info(sae: TopKSAE, directory: Path) -> str:
    """What ``info`` prints: shape, provenance, training and metrics of a saved SAE."""
    cfg, log, model = sae.cfg, sae.log, sae.cfg.model or {}
    train = log.get("train", {})
    lines = [
        f"SAE in {directory}",
        f"  hook {cfg.hook or '(none recorded)'}, {cfg.token_kind} tokens at positions {cfg.positions}",
        f"  {cfg.n_latents} latents of width {cfg.d_in}, k = {cfg.k}",
        f"  model {model.get('name', '?')} (weights sha256 {str(model.get('weights_sha256'))[:12]})",
    ]
    if model.get("dataset"):
        lines.append(
            f"  data {model['dataset']} (sha256 {str(model.get('dataset_sha256'))[:12]}), "
            f"{model.get('episodes')} episodes, {model.get('windows')} windows"
        )
    if train:
        curve = log.get("curve") or [{}]
        lines.append(
            f"  trained {train.get('steps')} steps of {train.get('batch_size')} tokens, lr {train.get('lr'):g}, "
            f"seed {train.get('seed')}, {log.get('seconds', math.nan):.0f} s, final loss "
            f"{curve[-1].get('loss', math.nan):.4f}"
        )
    metrics = {k: v for k, v in sae.metrics.items() if k != "spliced"}
    if metrics:
        lines.append("  metrics " + json.dumps(metrics, sort_keys=True))
    if sae.metrics.get("spliced"):
        lines.append("  spliced " + json.dumps(sae.metrics["spliced"], sort_keys=True))
    return "\n".join(lines)


__all__ = ["check_out_dir", "cmd_sae", "format_info", "format_metrics", "write_sae"]
