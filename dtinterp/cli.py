"""``dtinterp`` command-line entry point.

Argument parsing lives here; each command's work lives in the layer it belongs to and is imported
lazily, so ``dtinterp data info`` never pays for importing torch or TransformerLens.
User errors (:class:`~dtinterp.errors.DtinterpError`, bad env specs) print one line on stderr and exit 2,
and so do argument errors of every command (:class:`ArgumentParser`):
``dtinterp: error: collect: argument --episodes: expected an integer in 1..10000000, got '0'``.
Size-like arguments are bounded here by :mod:`dtinterp.limits`; what depends on the env or the model
(a view size, a number of windows) is bounded by the command once it knows them.

Sub-commands of other packages come in through the entry-point group ``dtinterp.commands``: each entry
point names a :class:`Command` (its name, help, arguments and a lazily imported handler). The web app
registers ``dtinterp app`` this way, so the library never names the app.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import NoReturn

from dtinterp.limits import (
    MAX_COLLECT_EPISODES,
    MAX_EPISODE_STEPS,
    MAX_EVAL_EPISODES,
    MAX_NUM_ENVS,
    MAX_POINTS,
    MAX_SAE_BATCH,
    MAX_SAE_LATENTS,
    MAX_SAE_STEPS,
    MAX_SAE_WINDOWS,
    MAX_WORKERS,
)

#: Entry-point group of sub-commands contributed by other packages.
COMMANDS_GROUP = "dtinterp.commands"


@dataclass(frozen=True)
class Command:
    """A sub-command contributed through :data:`COMMANDS_GROUP`."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    """Declares the command's arguments (cheap: no heavy imports)."""
    handler: str
    """``"module:function"`` taking the parsed args and returning an exit code, imported when run."""


# command name -> "module:function" taking the parsed args and returning an exit code
_COMMANDS = {
    "collect": "dtinterp.data.commands:cmd_collect",
    "data info": "dtinterp.data.commands:cmd_data_info",
    "train": "dtinterp.train.commands:cmd_train",
    "evaluate": "dtinterp.train.evaluate:cmd_evaluate",
    "calibrate": "dtinterp.train.calibrate:cmd_calibrate",
    "models": "dtinterp.model.shipped:cmd_models",
    "analyze": "dtinterp.analyze:cmd_analyze",
    "directions": "dtinterp.directions_cli:cmd_directions",
    "sae": "dtinterp.sae_cli:cmd_sae",
    "data export-minari": "dtinterp.data.minari_io:cmd_export_minari",
    "data import-minari": "dtinterp.data.minari_io:cmd_import_minari",
    "sweep": "dtinterp.scale.sweep:cmd_sweep",
}


def _add_backend(p: argparse.ArgumentParser, workers: bool) -> None:
    """``--backend local|ray`` and ``--ray-address`` (and ``--workers`` where the command lacks it)."""
    p.add_argument("--backend", choices=["local", "ray"], default="local", help="where the work runs")
    p.add_argument(
        "--ray-address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or a local Ray)"
    )
    if workers:
        p.add_argument(
            "--workers",
            type=_int_in(1, MAX_WORKERS),
            default=1,
            help="parallel workers (processes or Ray CPUs)",
        )


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the house's error format: one line ``dtinterp: error: <command>: <message>``, exit 2.

    Sub-parsers (``add_subparsers`` makes them of their parent's class) name their command, so every
    argument error of every command, contributed ones included, is one line without the usage block.
    """

    def error(self, message: str) -> NoReturn:
        command = self.prog.partition(" ")[2]
        text = " ".join(str(message).split())
        self.exit(2, f"dtinterp: error: {command + ': ' if command else ''}{text}\n")


#: Upper bound of a count argument that has no natural one (a seed, a step index).
_NO_LIMIT = 2**63 - 1


def _int_in(lo: int, hi: int = _NO_LIMIT) -> Callable[[str], int]:
    """An argparse type: an integer in ``lo..hi``."""

    def parse(text: str) -> int:
        want = f"an integer >= {lo}" if hi == _NO_LIMIT else f"an integer in {lo}..{hi}"
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}")
        return value

    return parse


_positive_int = _int_in(1)
_nonneg_int = _int_in(0)


def _finite_float(text: str) -> float:
    """An argparse type: a finite number (``nan``, ``inf`` and ``1e999`` are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def build_parser(load: Collection[str] = ()) -> argparse.ArgumentParser:
    """The ``dtinterp`` argument parser; contributed commands named in ``load`` get their full arguments."""
    p = ArgumentParser(prog="dtinterp", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    sub.required = True

    c = sub.add_parser("collect", help="collect a demonstration dataset with a scripted policy")
    c.add_argument("--env", required=True, help="MiniGrid env id, e.g. MiniGrid-DoorKey-8x8-v0")
    c.add_argument("--episodes", type=_int_in(1, MAX_COLLECT_EPISODES), required=True)
    c.add_argument("--out", required=True, help="output .npz file")
    c.add_argument("--policy", choices=["expert", "mixed", "random"], default="mixed")
    c.add_argument("--seed", type=_nonneg_int, default=0)
    c.add_argument("--workers", type=_int_in(1, MAX_WORKERS), default=1, help="worker processes")
    c.add_argument(
        "--view-size",
        type=_int_in(3),
        default=7,
        help="egocentric view size (odd >= 3, at most what the env uses)",
    )
    c.add_argument("--fully-observed", action="store_true", help="observe the whole grid")
    c.add_argument(
        "--max-steps", type=_int_in(1, MAX_EPISODE_STEPS), default=None, help="episode length override"
    )
    c.add_argument(
        "--policy-param",
        action="append",
        metavar="KEY=JSON",
        help='policy parameter, e.g. epsilon=0.1 or weights=\'{"expert": 0.5, "failure": 0.5}\' (repeatable)',
    )
    _add_backend(c, workers=False)
    c.set_defaults(command_key="collect")

    d = sub.add_parser("data", help="inspect datasets")
    dsub = d.add_subparsers(dest="data_command", metavar="SUBCOMMAND", parser_class=ArgumentParser)
    dsub.required = True
    di = dsub.add_parser("info", help="summary and return histogram of a dataset")
    di.add_argument("file", help="dataset .npz file")
    di.set_defaults(command_key="data info")
    dx = dsub.add_parser("export-minari", help="write a dataset as a Minari dataset (offline)")
    dx.add_argument("file", help="dataset .npz file")
    dx.add_argument("--id", dest="dataset_id", required=True, help="Minari id NAMESPACE/NAME-v0")
    dx.add_argument("--root", default=None, help="Minari datasets directory (default $MINARI_DATASETS_PATH)")
    dx.set_defaults(command_key="data export-minari")
    dm = dsub.add_parser("import-minari", help="read a Minari dataset into a .npz dataset (offline)")
    dm.add_argument("dataset_id", help="Minari id NAMESPACE/NAME-v0")
    dm.add_argument("--out", required=True, help="output .npz file")
    dm.add_argument("--root", default=None, help="Minari datasets directory (default $MINARI_DATASETS_PATH)")
    dm.set_defaults(command_key="data import-minari")

    t = sub.add_parser("train", help="train a decision transformer on a dataset")
    t.add_argument("--data", required=True, help="dataset .npz file, or minari:NAMESPACE/NAME-v0")
    t.add_argument("--out", required=True, help="run / checkpoint directory")
    t.add_argument("--config", default=None, help="JSON file with training and model hyperparameters")
    t.add_argument("--steps", type=_positive_int, default=None, help="override the number of steps")
    t.add_argument("--seed", type=_nonneg_int, default=None, help="override the seed")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    t.add_argument("--device", default=None, help="override the torch device (cpu, cuda); config default cpu")
    t.add_argument(
        "--logger", choices=["none", "tensorboard", "wandb"], default=None, help="override the metrics logger"
    )
    t.set_defaults(command_key="train")

    e = sub.add_parser("evaluate", help="roll out a trained model at target returns")
    e.add_argument("model_dir", help="checkpoint directory")
    e.add_argument(
        "--rtg", type=_finite_float, action="append", required=True, help="target return (repeatable)"
    )
    e.add_argument("--episodes", type=_int_in(1, MAX_EVAL_EPISODES), default=200)
    e.add_argument("--seed", type=_nonneg_int, default=1000)
    e.add_argument("--num-envs", type=_int_in(1, MAX_NUM_ENVS), default=32, help="envs stepped together")
    e.add_argument("--sample", action="store_true", help="sample actions instead of greedy")
    e.add_argument("--json", default=None, help="write the results as JSON here")
    e.add_argument("--gif", default=None, help="export the first episode at the first target as GIF/MP4")
    e.add_argument("--device", default="cpu")
    _add_backend(e, workers=True)
    e.set_defaults(command_key="evaluate")

    k = sub.add_parser("calibrate", help="achieved return vs target return")
    k.add_argument("model_dir", help="checkpoint directory")
    k.add_argument("--min", dest="rtg_min", type=_finite_float, default=-1.0)
    k.add_argument("--max", dest="rtg_max", type=_finite_float, default=1.0)
    k.add_argument("--points", type=_int_in(1, MAX_POINTS), default=21)
    k.add_argument("--episodes", type=_int_in(1, MAX_EVAL_EPISODES), default=50)
    k.add_argument("--seed", type=_nonneg_int, default=1000)
    k.add_argument("--num-envs", type=_int_in(1, MAX_NUM_ENVS), default=32)
    k.add_argument("--out", required=True, help="interactive plotly HTML (numbers go beside it as JSON)")
    k.add_argument("--device", default="cpu")
    _add_backend(k, workers=True)
    k.set_defaults(command_key="calibrate")

    w = sub.add_parser("sweep", help="train and evaluate one run per configuration of a grid")
    w.add_argument("base_config", help="JSON training config every run starts from")
    w.add_argument(
        "--grid", action="append", default=[], metavar="KEY=V1,V2", help="values of a (dotted) key"
    )
    w.add_argument("--samples", type=_int_in(1, 1000), default=1, help="seeds per configuration")
    w.add_argument("--data", default=None, help="dataset .npz or minari:ID (default: the config's)")
    w.add_argument("--out", required=True, help="directory of the runs and the summary table")
    w.add_argument("--metric", default="success", help="column the summary is ranked by")
    w.add_argument("--rtg", type=_finite_float, action="append", default=None, help="evaluation target")
    w.add_argument("--episodes", type=_int_in(1, MAX_EVAL_EPISODES), default=None, help="evaluation episodes")
    w.add_argument("--early-stop", action="store_true", help="ASHA early stopping (Ray Tune)")
    _add_backend(w, workers=True)
    w.set_defaults(command_key="sweep")

    r = sub.add_parser("directions", help="list, save, delete or export saved residual-stream directions")
    from dtinterp.directions_cli import add_arguments as add_direction_arguments

    add_direction_arguments(r)
    r.set_defaults(command_key="directions")

    s = sub.add_parser("sae", help="train a sparse autoencoder on a model's activations, or describe one")
    ssub = s.add_subparsers(dest="sae_command", metavar="SUBCOMMAND", parser_class=ArgumentParser)
    ssub.required = True
    st = ssub.add_parser("train", help="harvest activations, train, evaluate and save a TopK SAE")
    st.add_argument("model", help="shipped model name or checkpoint directory")
    st.add_argument("--data", required=True, metavar="FILE", help="dataset .npz whose windows are harvested")
    st.add_argument("--episodes", type=_positive_int, default=None, help="use the first N episodes (all)")
    st.add_argument("--hook", required=True, help="hook the SAE reads, e.g. blocks.1.hook_resid_post")
    st.add_argument("--token", choices=["S", "R", "A", "all"], default="S", help="tokens harvested (S)")
    st.add_argument(
        "--max-windows", type=_int_in(1, MAX_SAE_WINDOWS), default=20_000, help="windows, thinned (20000)"
    )
    st.add_argument("--latents", type=_int_in(1, MAX_SAE_LATENTS), default=1024, help="dictionary size")
    st.add_argument("--k", type=_int_in(1, MAX_SAE_LATENTS), default=16, help="latents kept per token")
    st.add_argument("--steps", type=_int_in(1, MAX_SAE_STEPS), default=2000, help="optimiser steps")
    st.add_argument("--batch-size", type=_int_in(1, MAX_SAE_BATCH), default=4096, help="tokens per step")
    st.add_argument("--lr", type=_finite_float, default=1e-3, help="Adam learning rate (1e-3)")
    st.add_argument("--seed", type=_nonneg_int, default=0, help="seed of the initialisation and batches")
    st.add_argument(
        "--play",
        type=_int_in(0, MAX_EVAL_EPISODES),
        default=0,
        help="seeded episodes played with and without the SAE spliced in (0: none)",
    )
    st.add_argument("--play-seed", type=_nonneg_int, default=1000, help="first env seed of --play")
    st.add_argument("--rtg", type=_finite_float, default=1.0, help="target return of --play")
    st.add_argument("--out", required=True, metavar="DIR", help="directory of sae.safetensors + sae.json")
    st.add_argument("--force", action="store_true", help="replace the SAE already in --out")
    st.set_defaults(command_key="sae")
    si = ssub.add_parser("info", help="what an SAE directory holds")
    si.add_argument("directory", help="directory written by dtinterp sae train")
    si.set_defaults(command_key="sae")

    m = sub.add_parser("models", help="list the shipped agents")
    m.add_argument("--dir", default=None, help="models directory (default: trained_models/)")
    m.set_defaults(command_key="models")

    a = sub.add_parser("analyze", help="run an analysis plugin on a model and write an HTML report")
    a.add_argument("model_dir", nargs="?", default=None, help="checkpoint directory")
    a.add_argument("--list", action="store_true", help="list the analyses and their parameters, then exit")
    a.add_argument("--analysis", default=None, metavar="ID", help="analysis id (see --list)")
    a.add_argument("--trajectory", default=None, metavar="FILE", help="one-episode dataset .npz")
    a.add_argument("--step", type=_nonneg_int, default=None, help="step of the episode (default: the last)")
    a.add_argument("--data", default=None, metavar="FILE", help="dataset .npz: windows at every step")
    a.add_argument("--episodes", type=_positive_int, default=None, help="use the first N episodes of --data")
    a.add_argument("--max-windows", type=_positive_int, default=None, help="cap on --data windows (256)")
    a.add_argument("--rollout", action="store_true", help="play one greedy episode now and analyse it")
    a.add_argument("--rtg", type=_finite_float, default=None, help="target return of --rollout")
    a.add_argument("--seed", type=_nonneg_int, default=None, help="env seed of --rollout (0)")
    a.add_argument("--edit", action="append", default=[], help="token edit, e.g. R3=0.5 (repeatable)")
    a.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="plugin parameter")
    a.add_argument("--out", default=None, metavar="REPORT.html", help="standalone HTML report")
    a.add_argument("--json", default=None, metavar="FILE", help="also write the result as JSON")
    a.add_argument("--device", default="cpu")
    a.set_defaults(command_key="analyze")

    for name, ep in sorted(contributed_commands().items()):
        if name not in load:  # named only: its package is imported when the command is asked for
            c = sub.add_parser(
                name, help=f"(from {ep.value.split(':')[0].split('.')[0]}: dtinterp {name} -h)"
            )
            c.set_defaults(command_key=name, handler=None)
            continue
        try:
            command = ep.load()
            if not isinstance(command, Command):
                raise TypeError(f"{ep.value} is not a dtinterp.cli.Command")
        except Exception as exc:  # noqa: BLE001 - a broken package must not take the CLI down
            print(f"dtinterp: warning: command {name!r} could not be loaded: {exc}", file=sys.stderr)
            continue
        c = sub.add_parser(name, help=command.help)
        command.add_arguments(c)
        c.set_defaults(command_key=name, handler=command.handler)
    return p


def contributed_commands() -> dict[str, EntryPoint]:
    """Sub-commands registered under :data:`COMMANDS_GROUP` by name (built-in names cannot be taken)."""
    return {ep.name: ep for ep in entry_points(group=COMMANDS_GROUP) if ep.name not in _COMMANDS}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    from dtinterp.errors import DtinterpError
    from envs.errors import EnvSpecError

    argv = list(sys.argv[1:] if argv is None else argv)
    # Contributed commands are imported only when asked for (or for help), so `dtinterp analyze` never
    # imports the packages that contribute other commands.
    first = argv[0] if argv else "-h"
    contributed = contributed_commands()
    load = set(contributed) if first in ("-h", "--help") else {first} & set(contributed)
    try:
        args = build_parser(load).parse_args(argv)
    except SystemExit as exc:  # an argument error (one line, already printed) or -h
        return exc.code if isinstance(exc.code, int) else 2
    module_name, func_name = (getattr(args, "handler", None) or _COMMANDS[args.command_key]).split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    try:
        return int(func(args) or 0)
    except (DtinterpError, EnvSpecError) as exc:
        text = " ".join(str(exc).splitlines())  # one line, whatever the message
        print(f"dtinterp: error: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dtinterp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # `python -m dtinterp.cli`: run the importable module's main, whose Command class is the one that
    # contributed commands are instances of (this file, run as __main__, defines a second one).
    from dtinterp.cli import main as _main

    sys.exit(_main())
