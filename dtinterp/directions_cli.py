"""``dtinterp directions list|save|delete|export``: manage the saved-direction library from the shell.

The library (:class:`dtinterp.interp.directions.DirectionLibrary`) lives in ``--dir`` or, by default,
``$DTINTERP_DIRECTIONS_DIR`` / ``~/.local/share/dtinterp/directions``. ``save`` makes one direction of a
model from one source:

=================================  ===========================================================================
``--embedding KIND:LABEL``         an embedding row, e.g. ``state:key@(4,2)``, ``action:forward``, ``time:t=3``
``--pca KIND:N``                   principal component ``N`` (1 = the largest) of the ``KIND`` embedding rows
``--neuron L:N[:in|out]``          neuron ``N`` of layer ``L``: its input weights (default) or output weights
``--unembed A[-B]``                an action's centred unembedding column, or the difference of two
``--mean-diff HOOK``               the mean activation at ``HOOK`` (e.g. ``blocks.1.hook_resid_post``) at the
                                   last state token of the windows of ``--set-a FILE`` minus those of
                                   ``--set-b FILE`` (datasets or trajectory files, windows at every step)
=================================  ===========================================================================

Analyses that explain a direction take a saved one as ``--param direction=saved:NAME``; the
``saved-directions`` analysis shows the library as a model reads it. Only argument declarations run at
import; the work (torch, the model) is imported when the command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dtinterp.interp.directions import SavedDirection
    from dtinterp.model.checkpoint import Checkpoint


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``dtinterp directions``."""
    p.add_argument(
        "--dir", default=None, help="library directory (default: $DTINTERP_DIRECTIONS_DIR or the data dir)"
    )
    sub = p.add_subparsers(dest="directions_command", required=True, metavar="{list,save,delete,export}")
    sub.add_parser("list", help="list the saved directions")
    s = sub.add_parser("save", help="save a direction of a model")
    s.add_argument("model", help="shipped model name or checkpoint directory")
    s.add_argument("name", help="name of the direction (A-Z a-z 0-9 _ . , : = @ ( ) + -)")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--embedding", metavar="KIND:LABEL", help="an embedding row, e.g. state:key@(4,2)")
    src.add_argument("--pca", metavar="KIND:N", help="principal component N (1-based) of the KIND embeddings")
    src.add_argument("--neuron", metavar="L:N[:in|out]", help="a neuron's input (default) or output weights")
    src.add_argument("--unembed", metavar="A[-B]", help="an action's centred unembedding (or a difference)")
    src.add_argument("--mean-diff", metavar="HOOK", help="mean activation at HOOK: --set-a minus --set-b")
    s.add_argument("--set-a", metavar="FILE", help="--mean-diff: dataset or trajectory .npz of the first set")
    s.add_argument(
        "--set-b", metavar="FILE", help="--mean-diff: dataset or trajectory .npz of the second set"
    )
    s.add_argument("--max-windows", type=int, default=256, help="--mean-diff: windows per set (default 256)")
    s.add_argument("--description", default="", help="what the direction means")
    s.add_argument("--overwrite", action="store_true", help="replace a direction of the same name")
    d = sub.add_parser("delete", help="delete a saved direction")
    d.add_argument("name")
    e = sub.add_parser("export", help="write saved directions to one safetensors file")
    e.add_argument("out", help="output .safetensors file")
    e.add_argument("names", nargs="*", help="directions to export (default: all)")


def cmd_directions(args: argparse.Namespace) -> int:
    """Run ``dtinterp directions ...``; user errors are one-line :class:`DirectionsError` s."""
    from dtinterp.interp.directions import DirectionLibrary

    lib = DirectionLibrary(args.dir)
    if args.directions_command == "list":
        saved = lib.list()
        if not saved:
            print(f"no saved directions in {lib.path}")
        for s in saved:
            model = f" [{s.model}]" if s.model else ""
            print(
                f"{s.name}\t{s.kind}{model}\td_model {s.d_model}\t|v| {float(s.vector.norm()):.4g}\t{s.description}"
            )
        return 0
    if args.directions_command == "delete":
        lib.delete(args.name)
        print(f"deleted {args.name} from {lib.path}")
        return 0
    if args.directions_command == "export":
        path = lib.export(args.out, args.names or None)
        print(f"wrote {path}")
        return 0
    direction = make_direction(args)
    lib.save(direction, overwrite=args.overwrite)
    print(
        f"saved {direction.name} ({direction.kind}, |v| {float(direction.vector.norm()):.4g}) in {lib.path}"
    )
    return 0


def make_direction(args: argparse.Namespace) -> SavedDirection:
    """The direction ``save`` describes (see the module docstring)."""
    from dtinterp.interp import directions as dirs
    from dtinterp.interp.embedding_geometry import embedding_rows, pca
    from dtinterp.model.checkpoint import load_checkpoint
    from dtinterp.model.shipped import resolve_model

    ckpt = load_checkpoint(resolve_model(args.model))
    model, name, text = ckpt.model, args.name, args.description
    common = {"model_name": ckpt.name, "description": text}
    if args.embedding:
        kind, _, label = args.embedding.partition(":")
        return dirs.from_embedding_row(model, _kind(kind), label, name, **common)
    if args.pca:
        kind, _, n = args.pca.partition(":")
        component = _int(n, "--pca N") - 1
        return dirs.from_pca(pca(embedding_rows(model, _kind(kind))), component, name, **common)
    if args.neuron:
        parts = args.neuron.split(":")
        if len(parts) not in (2, 3):
            raise dirs.DirectionsError(f"--neuron expects L:N or L:N:in|out, got {args.neuron!r}")
        side = parts[2] if len(parts) == 3 else "in"
        return dirs.from_neuron(
            model, _int(parts[0], "--neuron L"), _int(parts[1], "--neuron N"), side, name, **common
        )
    if args.unembed:
        a, _, b = args.unembed.partition("-")
        return dirs.from_unembed(model, a, name, minus=b or None, **common)
    return _mean_diff(args, ckpt, name, common)


def _mean_diff(
    args: argparse.Namespace, ckpt: Checkpoint, name: str, common: dict[str, Any]
) -> SavedDirection:
    import torch

    from dtinterp.data.dataset import load_dataset
    from dtinterp.data.episode import dataset_windows
    from dtinterp.interp.directions import DirectionsError, from_mean_diff

    if not (args.set_a and args.set_b):
        raise DirectionsError("--mean-diff needs --set-a FILE and --set-b FILE")
    hook = args.mean_diff
    acts = []
    for flag, path in (("--set-a", args.set_a), ("--set-b", args.set_b)):
        if not Path(path).is_file():
            raise DirectionsError(f"{flag}: no such file {path!r}")
        ds = load_dataset(path)
        inputs, _ = dataset_windows(ds, list(range(ds.n_episodes)), ckpt, args.max_windows, where=flag)
        with torch.inference_mode():
            _, cache = ckpt.model.run_with_cache(inputs, names_filter=[hook])
        if hook not in cache:
            raise DirectionsError(
                f"--mean-diff: the model has no hook {hook!r} (e.g. blocks.0.hook_resid_post)"
            )
        act = cache[hook][:, -1]  # the last state token of every window
        if act.dim() != 2 or act.shape[-1] != ckpt.model.cfg.d_model:
            raise DirectionsError(
                f"--mean-diff: {hook!r} is not a residual-stream hook (shape {tuple(act.shape)})"
            )
        acts.append(act)
    return from_mean_diff(acts[0], acts[1], name, hook=hook, **common)


def _kind(kind: str) -> str:
    from dtinterp.interp.directions import DirectionsError
    from dtinterp.interp.embedding_geometry import EMBEDDING_KINDS

    if kind not in EMBEDDING_KINDS:
        raise DirectionsError(f"embedding kind {kind!r} is not one of {', '.join(EMBEDDING_KINDS)}")
    return kind


def _int(text: str, what: str) -> int:
    from dtinterp.interp.directions import DirectionsError

    try:
        return int(text)
    except ValueError:
        raise DirectionsError(f"{what}: expected an integer, got {text!r}") from None
