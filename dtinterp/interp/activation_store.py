"""Activation store: a model's activations at chosen hooks over a dataset's windows, on disk in chunks.

Probes, sparse autoencoders and feature dashboards all read the same thing: the activations at a hook
(``blocks.1.hook_resid_post``) at the tokens of one kind (``S``: the state tokens, where actions are
predicted) of many windows. :func:`harvest` computes them once, batch by batch, and writes them to a
directory that :class:`ActivationStore` streams back:

- ``index.json``: what was stored (format version, hooks and their shapes, token kind and positions),
  whose activations (the model's name and weights digest), over which data (the dataset's fingerprint,
  its episodes, the window ends) and the list of chunks;
- ``chunk_00000.safetensors``, ...: each holds, for ``n`` consecutive windows, one tensor per hook
  ``[n, Kp, *shape]`` (``Kp`` token positions of the kind), ``rows [n, Kp]`` (the flat dataset row of
  each token's timestep, -1 at padding: a row indexes ``ds.facts``, ``ds.obs``, ...) and ``ends [n, 2]``
  (``(episode, step)`` each window ends at).

Memory is bounded by one chunk (``chunk_windows`` windows) plus one batch, whatever the dataset's size.
The windows are the one window builder's (:func:`~dtinterp.data.windows.gather_windows`), conditioned like
:func:`~dtinterp.data.episode.dataset_windows` (rollouts on their target return, demonstrations on their
achieved return-to-go); RTG is computed once for the whole dataset.

**Speed.** Only the requested hooks get a forward hook, which copies the requested positions straight
into the chunk buffer. The model keeps its fused fast path (one ``scaled_dot_product_attention`` per
layer) unless a requested hook lives *inside* attention (``attn.hook_q/k/v/z``); residual-stream, layer
output, embedding and MLP hooks cost only the copy (``benchmarks/features.py`` measures the ratio to plain
forward passes). Attention patterns and scores (``[B, H, P, P]``) are not stored: they have no single
token position; nor are the per-kind input embeddings (``hook_state_embed``, ..., one vector per
timestep): ``hook_embed`` holds them per token.

**Invariant** (tested): a stored activation equals ``model.run_with_cache(window)[hook][:, position]``
for every window, hook and position, whatever ``batch_size`` and ``chunk_windows`` are.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm

from dtinterp.data.dataset import TrajectoryDataset
from dtinterp.data.episode import dataset_targets, window_ends
from dtinterp.data.windows import conditioned_rtg, gather_windows, returns_to_go
from dtinterp.errors import DtinterpError
from dtinterp.model.checkpoint import Checkpoint, atomic_write_text
from dtinterp.model.inputs import TOKEN_KINDS, token_labels

FORMAT_VERSION = 1
INDEX_FILE = "index.json"
#: Token kinds a store can hold: one of ``R``, ``S``, ``A``, or every token.
STORE_KINDS = (*TOKEN_KINDS, "all")
_NO_POSITION = ("hook_attn_scores", "hook_pattern")
_PER_TIMESTEP = ("hook_rtg_embed", "hook_state_embed", "hook_action_embed", "hook_time_embed")
_META_TENSORS = ("rows", "ends")
_CHUNK = re.compile(r"chunk_\d{5,}\.safetensors")


class ActivationStoreError(DtinterpError):
    """An activation store that is missing, incomplete, corrupt, or does not fit the request."""


def kind_positions(context_len: int, kind: str) -> list[int]:
    """Token positions of ``kind`` in a window of ``context_len`` timesteps (``"S"``: 1, 4, 7, ...)."""
    if kind not in STORE_KINDS:
        raise ActivationStoreError(f"token kind must be one of {STORE_KINDS}, got {kind!r}")
    n_tokens = 3 * context_len - 1
    if kind == "all":
        return list(range(n_tokens))
    return list(range(TOKEN_KINDS.index(kind), n_tokens, 3))


def check_hooks(checkpoint: Checkpoint, hooks: Sequence[str]) -> list[str]:
    """``hooks`` if every one is a hook of the model with a token axis; else a one-line error."""
    names = set(checkpoint.model.hook_dict)
    hooks = list(dict.fromkeys(hooks))
    if not hooks:
        raise ActivationStoreError("no hooks chosen: name at least one, e.g. blocks.1.hook_resid_post")
    for h in hooks:
        if h not in names:
            raise ActivationStoreError(
                f"unknown hook {h!r}: not a hook of the model (e.g. blocks.0.hook_resid_post)"
            )
        if h.endswith(_NO_POSITION):
            raise ActivationStoreError(f"hook {h!r} has no single token position (it is [B, H, P, P])")
        if h in _PER_TIMESTEP:
            raise ActivationStoreError(
                f"hook {h!r} holds one vector per timestep, not per token: store hook_embed instead"
            )
    return hooks


@dataclass
class ActivationStore:
    """A harvested store, read lazily chunk by chunk (see the module docstring for the layout)."""

    path: Path
    index: dict[str, Any]
    """The parsed ``index.json``."""

    @classmethod
    def open(cls, path: str | os.PathLike) -> ActivationStore:
        """Open the store at ``path``; a missing or malformed index is an :class:`ActivationStoreError`."""
        path = Path(path)
        index_path = path / INDEX_FILE
        if not index_path.is_file():
            raise ActivationStoreError(
                f"{path} is not an activation store (no {INDEX_FILE}; incomplete harvest?)"
            )
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ActivationStoreError(f"cannot read {index_path}: {exc}") from None
        keys = (
            "format_version",
            "hooks",
            "token_kind",
            "positions",
            "chunks",
            "n_windows",
            "model",
            "dataset",
        )
        if not isinstance(index, dict) or any(k not in index for k in keys):
            raise ActivationStoreError(f"{index_path} is not an activation-store index")
        if index["format_version"] != FORMAT_VERSION:
            raise ActivationStoreError(
                f"{index_path}: unsupported store format_version {index['format_version']!r} "
                f"(expected {FORMAT_VERSION})"
            )
        return cls(path, index)

    # ------------------------------------------------------------------ what is stored

    @property
    def hooks(self) -> list[str]:
        return list(self.index["hooks"])

    def shape(self, hook: str) -> tuple[int, ...]:
        """The per-token shape of ``hook``'s activations (``(d_model,)`` for the residual stream)."""
        self._check_hook(hook)
        return tuple(self.index["hooks"][hook])

    @property
    def token_kind(self) -> str:
        return self.index["token_kind"]

    @property
    def positions(self) -> list[int]:
        """Token positions (in the window) of the stored tokens."""
        return list(self.index["positions"])

    @property
    def position_labels(self) -> list[str]:
        """Labels of the stored tokens (``S1 .. SK``)."""
        return list(self.index["position_labels"])

    @property
    def n_windows(self) -> int:
        return int(self.index["n_windows"])

    @property
    def n_tokens(self) -> int:
        """Real (not padded) stored tokens."""
        return int(self.index["n_tokens"])

    def check_fits(self, checkpoint: Checkpoint | None = None, ds: TrajectoryDataset | None = None) -> None:
        """One-line error unless the store was harvested from ``checkpoint``'s weights and ``ds``'s steps."""
        if checkpoint is not None:
            recorded = self.index["model"].get("weights_sha256")
            if recorded is not None and checkpoint.weights_sha256 not in (None, recorded):
                raise ActivationStoreError(
                    f"store {self.path} holds activations of other weights than model {checkpoint.name!r}"
                )
        if ds is not None and ds.fingerprint()["sha256"] != self.index["dataset"]["sha256"]:
            raise ActivationStoreError(f"store {self.path} was harvested from another dataset")

    # ------------------------------------------------------------------ reading

    def chunks(self, hooks: Sequence[str] | None = None) -> Iterator[dict[str, Tensor]]:
        """Each chunk in order as ``{hook: [n, Kp, *shape], "rows": [n, Kp], "ends": [n, 2]}``."""
        names = self.hooks if hooks is None else list(hooks)
        for h in names:
            self._check_hook(h)
        for k in range(len(self.index["chunks"])):
            yield self._read_chunk(k, names)

    def load(self, hook: str) -> Float[Tensor, "W Kp *shape"]:
        """Every window's activations at ``hook`` in one tensor (mind its size: see :attr:`n_windows`)."""
        return torch.cat([c[hook] for c in self.chunks([hook])])

    def rows(self) -> Int[Tensor, "W Kp"]:
        """The flat dataset row of every stored token (-1 at padding)."""
        return torch.cat([c["rows"] for c in self.chunks([])])

    def ends(self) -> Int[Tensor, "W 2"]:
        """``(episode, step)`` each window ends at."""
        return torch.cat([c["ends"] for c in self.chunks([])])

    def tokens(
        self, hook: str, batch_size: int, shuffle: bool = False, seed: int = 0
    ) -> Iterator[Float[Tensor, "b d"]]:
        """Real tokens of ``hook`` flattened to ``[b, prod(shape)]`` batches, one chunk in memory at a time.

        ``shuffle`` visits the chunks in a random order and permutes the tokens of each (seeded: the same
        ``seed`` gives the same batches). The last batch of each chunk may be smaller.
        """
        g = torch.Generator().manual_seed(seed)
        n_chunks = len(self.index["chunks"])
        order = torch.randperm(n_chunks, generator=g).tolist() if shuffle else range(n_chunks)
        for k in order:
            chunk = self._read_chunk(k, [hook])
            acts = chunk[hook][chunk["rows"] >= 0].flatten(1)  # [n_real, d]
            if shuffle:
                acts = acts[torch.randperm(acts.shape[0], generator=g)]
            yield from acts.split(batch_size)

    def _check_hook(self, hook: str) -> None:
        if hook not in self.index["hooks"]:
            raise ActivationStoreError(f"store {self.path} has no hook {hook!r} (it has {self.hooks})")

    def _read_chunk(self, k: int, hooks: Sequence[str]) -> dict[str, Tensor]:
        entry = self.index["chunks"][k]
        path = self.path / entry["file"]
        try:
            with safe_open(path, "pt") as f:
                out = {name: f.get_tensor(name) for name in (*hooks, *_META_TENSORS)}
        except (OSError, SafetensorError) as exc:
            raise ActivationStoreError(f"cannot read store chunk {path}: {exc}") from None
        n, kp = entry["n_windows"], len(self.positions)
        for name, t in out.items():
            expected = (n, 2) if name == "ends" else (n, kp, *self.index["hooks"].get(name, ()))
            if tuple(t.shape) != expected:
                raise ActivationStoreError(
                    f"{path}: {name!r} has shape {tuple(t.shape)}, expected {expected}"
                )
        return out


def harvest(
    checkpoint: Checkpoint,
    ds: TrajectoryDataset,
    hooks: Sequence[str],
    out: str | os.PathLike,
    *,
    token_kind: str = "S",
    episodes: Sequence[int] | None = None,
    max_windows: int | None = None,
    ends: Sequence[tuple[int, int]] | None = None,
    batch_size: int = 512,
    chunk_windows: int = 4096,
    dtype: torch.dtype = torch.float32,
    overwrite: bool = False,
    progress: bool = True,
) -> ActivationStore:
    """Run ``checkpoint``'s model over windows of ``ds`` and store its activations at ``hooks``.

    Windows end at every step of ``episodes`` (default: all), thinned evenly to ``max_windows``
    (:func:`~dtinterp.data.episode.window_ends`), or exactly at ``ends`` (``(episode, step)`` pairs, e.g.
    the steps where a decision is taken). ``out`` must not exist (or be empty) unless ``overwrite``; the
    index is written last, so an interrupted harvest leaves no readable store.
    """
    model = checkpoint.model
    cfg = model.cfg
    hooks = check_hooks(checkpoint, hooks)
    checkpoint.check_fits(ds.env_spec, tuple(ds.obs.shape[1:3]), where="the dataset")
    if batch_size < 1 or chunk_windows < 1:
        raise ActivationStoreError(
            f"batch_size and chunk_windows must be >= 1, got {batch_size}, {chunk_windows}"
        )
    positions = kind_positions(cfg.context_len, token_kind)
    if ends is not None:
        ends = np.asarray(ends, dtype=np.int64).reshape(-1, 2)
        ok = (ends[:, 0] >= 0) & (ends[:, 0] < ds.n_episodes)
        ok[ok] &= (ends[ok, 1] >= 0) & (ends[ok, 1] < ds.episode_lengths()[ends[ok, 0]])
        if len(ends) == 0:
            raise ActivationStoreError("no window ends given")
        if not ok.all():
            bad = tuple(ends[~ok][0].tolist())
            raise ActivationStoreError(f"window end {bad} is not a step of the dataset (episode, step)")
        episodes = sorted(set(ends[:, 0].tolist()))
    else:
        episodes = list(range(ds.n_episodes)) if episodes is None else [int(e) for e in episodes]
        if not episodes or any(not 0 <= e < ds.n_episodes for e in episodes):
            raise ActivationStoreError(f"episodes must be a non-empty subset of 0..{ds.n_episodes - 1}")
        ends = np.asarray(
            window_ends(ds, episodes, max_windows or ds.n_transitions), dtype=np.int64
        )  # [W, 2]
    out = _prepare_dir(Path(out), overwrite)

    starts = ds.episode_starts
    targets = dataset_targets(ds)
    if all(t is None for t in targets):
        rtg = returns_to_go(ds.rewards, starts)
    else:
        rtg = conditioned_rtg(ds.rewards, starts, targets)
    first_all = starts[ends[:, 0]]
    flat_all = first_all + ends[:, 1]
    pos_t = torch.tensor(positions)
    timestep_of = pos_t // 3  # [Kp] the window timestep of each stored token
    device = model.W_U.device

    buffers: dict[str, Tensor] = {}
    shapes: dict[str, list[int]] = {}
    cursor = [0]  # where the current batch lands in the chunk buffer

    def capture(act: Tensor, hook) -> None:
        sel = act[:, pos_t.to(act.device)] if len(positions) != act.shape[1] else act
        if hook.name not in buffers:
            shapes[hook.name] = list(sel.shape[2:])
            buffers[hook.name] = torch.empty(chunk_windows, *sel.shape[1:], dtype=dtype)
        buffers[hook.name][cursor[0] : cursor[0] + sel.shape[0]] = sel.detach().to("cpu", dtype)

    chunk_entries = []
    n_real = 0
    bar = tqdm(
        total=len(ends), unit="win", desc=f"harvest {checkpoint.name}", disable=None if progress else True
    )
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), model.hooks(fwd_hooks=[(h, capture) for h in hooks]):
            for c0 in range(0, len(ends), chunk_windows):
                c1 = min(c0 + chunk_windows, len(ends))
                for b0 in range(c0, c1, batch_size):
                    b1 = min(b0 + batch_size, c1)
                    inputs = gather_windows(
                        ds, rtg, flat_all[b0:b1], first_all[b0:b1], cfg.context_len, checkpoint.rtg_scale,
                        cfg.n_actions, cfg.max_timestep,
                    ).to(device)  # fmt: skip
                    cursor[0] = b0 - c0
                    model(inputs)
                    bar.update(b1 - b0)
                # Flat dataset row of each stored token's timestep; -1 where the window is padded.
                rows = torch.from_numpy(flat_all[c0:c1])[:, None] - (cfg.context_len - 1) + timestep_of[None]
                rows = torch.where(rows >= torch.from_numpy(first_all[c0:c1])[:, None], rows, -1)
                n_real += int((rows >= 0).sum())
                tensors = {h: buffers[h][: c1 - c0] for h in hooks}
                tensors |= {"rows": rows.contiguous(), "ends": torch.from_numpy(ends[c0:c1]).contiguous()}
                name = f"chunk_{len(chunk_entries):05d}.safetensors"
                save_file(tensors, str(out / name))
                chunk_entries.append({"file": name, "n_windows": c1 - c0})
    finally:
        model.train(was_training)
        bar.close()

    labels = token_labels(cfg.context_len)
    index = {
        "format_version": FORMAT_VERSION,
        "model": {"name": checkpoint.name, "weights_sha256": checkpoint.weights_sha256},
        "hooks": {h: shapes[h] for h in hooks},
        "dtype": str(dtype).removeprefix("torch."),
        "token_kind": token_kind,
        "positions": positions,
        "position_labels": [labels[p] for p in positions],
        "context_len": cfg.context_len,
        "rtg_scale": checkpoint.rtg_scale,
        "n_windows": len(ends),
        "n_tokens": n_real,
        "dataset": {**ds.fingerprint(), "episodes_used": len(episodes), "max_windows": max_windows},
        "chunks": chunk_entries,
    }
    atomic_write_text(out / INDEX_FILE, json.dumps(index, indent=1) + "\n")
    return ActivationStore(out, index)


def _prepare_dir(out: Path, overwrite: bool) -> Path:
    """``out`` created, or emptied of an earlier store's files (only those) with ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise ActivationStoreError(f"store path {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        ours = [p for p in out.iterdir() if p.name == INDEX_FILE or _CHUNK.fullmatch(p.name)]
        if not overwrite or len(ours) != len(list(out.iterdir())):
            what = "is not empty" if not overwrite else "holds files that are not an activation store's"
            raise ActivationStoreError(
                f"store directory {out} {what}" + ("" if overwrite else " (overwrite=True replaces a store)")
            )
        (out / INDEX_FILE).unlink(missing_ok=True)  # first: a half-replaced store is never readable
        for p in ours:
            p.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


__all__ = [
    "ActivationStore",
    "ActivationStoreError",
    "FORMAT_VERSION",
    "STORE_KINDS",
    "check_hooks",
    "harvest",
    "kind_positions",
]
