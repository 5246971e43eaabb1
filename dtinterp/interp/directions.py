"""Saved directions: a small library of named residual-stream vectors, on disk as JSON + safetensors.

A *direction* is a ``[d_model]`` vector an analysis explains or projects on: an embedding row, a PCA axis,
a neuron's input or output weights, a mean difference of activations, an unembedding column. Analyses
produce them, the user names and keeps the interesting ones, and later analyses (DLA, gridmaps, steering)
take them back by name.

A library is a directory (chosen by the user; default :func:`default_directions_dir`, never inside the
package) holding two files:

- ``index.json``: ``{"format_version": 1, "directions": {name: {kind, model, d_model, description,
  metadata, created, sha256}}}``
- ``directions.safetensors``: one float32 tensor ``[d_model]`` per name.

Writes are atomic (temp file + rename), tensors first, index second, under an exclusive ``flock`` on
``.lock`` so concurrent writers (several app workers) never lose each other's entries. The index records
each vector's sha256, so files that disagree (an interrupted overwrite, a hand-copied file) are a one-line
:class:`DirectionsError` naming the file; tensors that no index entry names (an interrupted first save)
are ignored and dropped at the next write. No pickle anywhere. :meth:`DirectionLibrary.export` writes a
selection to a single safetensors file whose header holds the index entries; :func:`read_export` reads it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from dtinterp.errors import DtinterpError
from dtinterp.interp.attribution import centred_unembed
from dtinterp.interp.embedding_geometry import PCA, embedding_rows
from dtinterp.model.checkpoint import atomic_write_bytes, atomic_write_text
from dtinterp.model.hooked_dt import HookedDecisionTransformer
from envs.encoding import ACTION_NAMES

FORMAT_VERSION = 1
INDEX_FILE = "index.json"
TENSORS_FILE = "directions.safetensors"
LOCK_FILE = ".lock"
DIRECTION_KINDS = ("embedding-row", "pca", "neuron-in", "neuron-out", "mean-diff", "unembed", "custom")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.,:=@()+\-]{0,99}")
_ENTRY_KEYS = {"kind", "model", "d_model", "description", "metadata", "created", "sha256"}


class DirectionsError(DtinterpError):
    """A saved direction is missing, misnamed, corrupt on disk, or does not fit the model."""


def default_directions_dir() -> Path:
    """``$DTINTERP_DIRECTIONS_DIR``, else ``$XDG_DATA_HOME/dtinterp/directions`` (``~/.local/share/...``)."""
    env = os.environ.get("DTINTERP_DIRECTIONS_DIR")
    if env:
        return Path(env).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data).expanduser() / "dtinterp" / "directions"


def check_name(name: str) -> str:
    """``name`` if valid: 1-100 of ``A-Z a-z 0-9 _ . , : = @ ( ) + -``, a letter or digit first."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise DirectionsError(
            f"invalid direction name {name!r}: use 1-100 characters from A-Z a-z 0-9 _ . , : = @ ( ) + -, "
            "starting with a letter or digit"
        )
    return name


@dataclass
class SavedDirection:
    """A named residual-stream direction and where it came from."""

    name: str
    vector: Float[Tensor, "d"]
    """The direction (float32, CPU, not normalised: a neuron's weights keep their norm)."""
    kind: str
    """How it was made: one of :data:`DIRECTION_KINDS`."""
    model: str = ""
    """Name of the model it belongs to (a shipped agent's name, a checkpoint directory)."""
    description: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Kind-specific provenance (JSON values): layer, neuron, hook, action, PCA component, counts, ..."""
    created: str = ""
    """ISO-8601 UTC time of creation."""

    def __post_init__(self) -> None:
        check_name(self.name)
        if self.kind not in DIRECTION_KINDS:
            raise DirectionsError(
                f"direction {self.name!r}: kind must be one of {DIRECTION_KINDS}, got {self.kind!r}"
            )
        vector = torch.as_tensor(self.vector).detach()
        if vector.dim() != 1 or vector.numel() == 0:
            raise DirectionsError(
                f"direction {self.name!r} must be a vector [d_model], got shape {tuple(vector.shape)}"
            )
        self.vector = vector.to("cpu", torch.float32).clone()  # never a view of a model weight
        if not torch.isfinite(self.vector).all():
            raise DirectionsError(f"direction {self.name!r} has non-finite entries")
        try:
            json.dumps(self.metadata)
        except TypeError as exc:
            raise DirectionsError(f"direction {self.name!r}: metadata is not JSON ({exc})") from None
        if not self.created:
            self.created = datetime.now(timezone.utc).isoformat(timespec="seconds")

    @property
    def d_model(self) -> int:
        return self.vector.shape[0]

    def check_fits(self, model: HookedDecisionTransformer) -> None:
        """One-line :class:`DirectionsError` unless the vector has the model's ``d_model``."""
        if self.d_model != model.cfg.d_model:
            raise DirectionsError(
                f"direction {self.name!r} has d_model {self.d_model} (model {self.model or '?'}), "
                f"but this model has d_model {model.cfg.d_model}"
            )

    def to(self, model: HookedDecisionTransformer) -> Float[Tensor, "d"]:
        """The vector on the model's device and dtype, after :meth:`check_fits`."""
        self.check_fits(model)
        return self.vector.to(model.W_U)

    def _entry(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "model": self.model,
            "d_model": self.d_model,
            "description": self.description,
            "metadata": self.metadata,
            "created": self.created,
            "sha256": _digest(self.vector),
        }


def _digest(vector: Tensor) -> str:
    return hashlib.sha256(vector.numpy().tobytes()).hexdigest()


class DirectionLibrary:
    """The directions stored in one directory (created on the first save)."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path).expanduser() if path is not None else default_directions_dir()

    @property
    def index_path(self) -> Path:
        return self.path / INDEX_FILE

    @property
    def tensors_path(self) -> Path:
        return self.path / TENSORS_FILE

    def names(self) -> list[str]:
        """Names of the stored directions, sorted."""
        return sorted(self._read()[0])

    def list(self) -> list[SavedDirection]:
        """Every stored direction (with its vector), sorted by name."""
        index, tensors = self._read()
        return [_from_entry(n, index[n], tensors[n], self.index_path) for n in sorted(index)]

    def __contains__(self, name: str) -> bool:
        return name in self._read()[0]

    def load(self, name: str, model: HookedDecisionTransformer | None = None) -> SavedDirection:
        """The direction ``name`` (checked against ``model``'s ``d_model`` when given)."""
        index, tensors = self._read()
        if name not in index:
            raise DirectionsError(f"no direction named {name!r} in {self.index_path}")
        direction = _from_entry(name, index[name], tensors[name], self.index_path)
        if model is not None:
            direction.check_fits(model)
        return direction

    def save(self, direction: SavedDirection, overwrite: bool = False) -> None:
        """Store ``direction`` under its name (an existing name needs ``overwrite``)."""
        with self._locked():
            index, tensors = self._read()
            if direction.name in index and not overwrite:
                raise DirectionsError(
                    f"a direction named {direction.name!r} already exists in {self.index_path}"
                )
            index[direction.name] = direction._entry()
            tensors[direction.name] = direction.vector
            self._write(index, tensors)

    def delete(self, name: str) -> None:
        """Remove the direction ``name``."""
        with self._locked():
            index, tensors = self._read()
            if name not in index:
                raise DirectionsError(f"no direction named {name!r} in {self.index_path}")
            del index[name], tensors[name]
            self._write(index, tensors)

    def export(self, path: str | os.PathLike, names: list[str] | None = None) -> Path:
        """Write ``names`` (default: all) to one safetensors file whose header holds their index entries."""
        index, tensors = self._read()
        names = sorted(index) if names is None else list(names)
        missing = [n for n in names if n not in index]
        if missing:
            raise DirectionsError(f"no direction named {missing[0]!r} in {self.index_path}")
        header = json.dumps({"format_version": FORMAT_VERSION, "directions": {n: index[n] for n in names}})
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, st_save({n: tensors[n] for n in names}, metadata={"index": header}))
        return path

    # ------------------------------------------------------------------ files

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> tuple[dict[str, dict[str, Any]], dict[str, Tensor]]:
        """``(index entries, tensors)`` checked against each other; empty for a new library."""
        if not self.index_path.exists():
            return {}, {}
        try:
            doc = json.loads(self.index_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DirectionsError(f"cannot read the direction index {self.index_path}: {exc}") from None
        index = _parse_index(doc, self.index_path)
        if not self.tensors_path.exists():
            if index:
                raise DirectionsError(f"direction tensors file {self.tensors_path} is missing")
            return index, {}
        try:
            tensors = st_load(self.tensors_path.read_bytes())
        except (OSError, SafetensorError) as exc:
            raise DirectionsError(f"cannot read the direction tensors {self.tensors_path}: {exc}") from None
        for name, entry in index.items():
            if name not in tensors or _digest(tensors[name].float().contiguous()) != entry["sha256"]:
                raise DirectionsError(
                    f"{self.tensors_path} does not hold the vector {INDEX_FILE} records for {name!r}"
                )
        return index, {n: tensors[n] for n in index}

    def _write(self, index: dict[str, dict[str, Any]], tensors: dict[str, Tensor]) -> None:
        atomic_write_bytes(self.tensors_path, st_save({n: tensors[n].contiguous() for n in index}))
        doc = {"format_version": FORMAT_VERSION, "directions": dict(sorted(index.items()))}
        atomic_write_text(self.index_path, json.dumps(doc, indent=1) + "\n")


def read_export(path: str | os.PathLike) -> list[SavedDirection]:
    """The directions in a file written by :meth:`DirectionLibrary.export`."""
    path = Path(path).expanduser()
    try:
        with safe_open(path, "pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
            doc = json.loads((f.metadata() or {})["index"])
    except (OSError, SafetensorError, ValueError, KeyError, TypeError) as exc:
        raise DirectionsError(f"cannot read exported directions {path}: {exc}") from None
    index = _parse_index(doc, path)
    out = []
    for name in sorted(index):
        if name not in tensors or _digest(tensors[name].float().contiguous()) != index[name]["sha256"]:
            raise DirectionsError(f"{path} does not hold the vector its header records for {name!r}")
        out.append(_from_entry(name, index[name], tensors[name], path))
    return out


def _parse_index(doc: Any, where: Path) -> dict[str, dict[str, Any]]:
    if not isinstance(doc, dict) or doc.get("format_version") != FORMAT_VERSION:
        raise DirectionsError(f"{where} is not a version-{FORMAT_VERSION} direction index")
    entries = doc.get("directions")
    if not isinstance(entries, dict):
        raise DirectionsError(f"{where} has no 'directions' table")
    for name, entry in entries.items():
        if not isinstance(entry, dict) or set(entry) != _ENTRY_KEYS or not isinstance(entry["d_model"], int):
            raise DirectionsError(f"{where}: malformed entry for direction {name!r}")
    return dict(entries)


def _from_entry(name: str, entry: dict[str, Any], vector: Tensor, where: Path) -> SavedDirection:
    if vector.shape != (entry["d_model"],):
        raise DirectionsError(
            f"{where}: direction {name!r} has shape {tuple(vector.shape)}, not [{entry['d_model']}]"
        )
    try:
        return SavedDirection(
            name=name,
            vector=vector,
            kind=entry["kind"],
            model=entry["model"],
            description=entry["description"],
            metadata=entry["metadata"],
            created=entry["created"],
        )
    except DirectionsError as exc:
        raise DirectionsError(f"{where}: {exc}") from None


# ------------------------------------------------------------- constructors


@torch.no_grad()
def from_embedding_row(
    model: HookedDecisionTransformer,
    kind: str,
    row: int | str,
    name: str | None = None,
    *,
    model_name: str = "",
    description: str = "",
) -> SavedDirection:
    """One embedding row (:func:`~dtinterp.interp.embedding_geometry.embedding_rows`) by index or label."""
    rows = embedding_rows(model, kind)
    if isinstance(row, str):
        if row not in rows.labels:
            raise DirectionsError(f"no {kind} embedding row labelled {row!r}")
        idx = rows.labels.index(row)
    else:
        idx = int(row)
        if not 0 <= idx < len(rows):
            raise DirectionsError(f"{kind} embedding row {idx} is out of range 0..{len(rows) - 1}")
    label = rows.labels[idx]
    return SavedDirection(
        name=name or f"{kind}:{label}",
        vector=rows.vectors[idx],
        kind="embedding-row",
        model=model_name,
        description=description or f"{kind} embedding row {label}",
        metadata={"embedding_kind": kind, "row": idx, "label": label},
    )


def from_pca(
    result: PCA, component: int, name: str | None = None, *, model_name: str = "", description: str = ""
) -> SavedDirection:
    """Principal axis ``component`` of a :class:`~dtinterp.interp.embedding_geometry.PCA` (unit norm)."""
    if not 0 <= component < result.components.shape[0]:
        raise DirectionsError(
            f"PCA component {component} is out of range 0..{result.components.shape[0] - 1}"
        )
    ratio = float(result.explained_variance_ratio[component])
    return SavedDirection(
        name=name or f"pc{component}",
        vector=result.components[component],
        kind="pca",
        model=model_name,
        description=description or f"principal component {component} ({ratio:.1%} of the variance)",
        metadata={"component": component, "explained_variance_ratio": ratio, "n_rows": len(result.labels)},
    )


@torch.no_grad()
def from_neuron(
    model: HookedDecisionTransformer,
    layer: int,
    neuron: int,
    side: str = "in",
    name: str | None = None,
    *,
    model_name: str = "",
    description: str = "",
) -> SavedDirection:
    """A neuron's input weights ``W_in[:, n]`` (``side="in"``, read after ln2) or its ``W_out[n]``."""
    if model.cfg.attn_only:
        raise DirectionsError("the model is attention-only: it has no MLP neurons")
    if not 0 <= layer < model.cfg.n_layers or not 0 <= neuron < model.cfg.d_mlp:
        raise DirectionsError(
            f"neuron L{layer}N{neuron} does not exist ({model.cfg.n_layers} layers of {model.cfg.d_mlp})"
        )
    if side not in ("in", "out"):
        raise DirectionsError(f"side must be 'in' or 'out', got {side!r}")
    mlp = model.blocks[layer].mlp
    vector = mlp.W_in[:, neuron] if side == "in" else mlp.W_out[neuron]
    return SavedDirection(
        name=name or f"L{layer}N{neuron}-{side}",
        vector=vector,
        kind=f"neuron-{side}",
        model=model_name,
        description=description
        or f"{'input' if side == 'in' else 'output'} weights of neuron L{layer}N{neuron}",
        metadata={"layer": layer, "neuron": neuron},
    )


def from_mean_diff(
    acts_a: Float[Tensor, "... d"],
    acts_b: Float[Tensor, "... d"],
    name: str,
    *,
    hook: str = "",
    model_name: str = "",
    description: str = "",
) -> SavedDirection:
    """``mean(acts_a) - mean(acts_b)`` over every leading dimension (e.g. activations at a hook over two
    sets of windows, ``cache[hook][:, pos]``)."""
    a, b = acts_a.detach().reshape(-1, acts_a.shape[-1]), acts_b.detach().reshape(-1, acts_b.shape[-1])
    if a.shape[-1] != b.shape[-1] or a.shape[0] == 0 or b.shape[0] == 0:
        raise DirectionsError(
            "mean difference needs two non-empty sets of equal width, "
            f"got {tuple(acts_a.shape)} and {tuple(acts_b.shape)}"
        )
    return SavedDirection(
        name=name,
        vector=a.double().mean(0) - b.double().mean(0),
        kind="mean-diff",
        model=model_name,
        description=description
        or f"mean difference of {hook or 'activations'} ({a.shape[0]} vs {b.shape[0]})",
        metadata={"hook": hook, "n_a": a.shape[0], "n_b": b.shape[0]},
    )


@torch.no_grad()
def from_unembed(
    model: HookedDecisionTransformer,
    action: int | str,
    name: str | None = None,
    *,
    minus: int | str | None = None,
    centred: bool = True,
    model_name: str = "",
    description: str = "",
) -> SavedDirection:
    """The unembedding column ``W_U[:, a]`` (``minus``: ``W_U[:, a] - W_U[:, b]``), with the final LN's
    centring folded in (``centred``, :func:`~dtinterp.interp.attribution.centred_unembed`)."""
    W = centred_unembed(model) if centred else model.W_U
    a = _action_id(model, action)
    vector, label = W[:, a], ACTION_NAMES[a]
    if minus is not None:
        b = _action_id(model, minus)
        vector, label = vector - W[:, b], f"{label}-{ACTION_NAMES[b]}"
    return SavedDirection(
        name=name or f"unembed:{label}",
        vector=vector,
        kind="unembed",
        model=model_name,
        description=description or f"unembedding of {label}{' (centred)' if centred else ''}",
        metadata={
            "action": ACTION_NAMES[a],
            "minus": None if minus is None else ACTION_NAMES[b],
            "centred": centred,
        },
    )


def _action_id(model: HookedDecisionTransformer, action: int | str) -> int:
    names = ACTION_NAMES[: model.cfg.n_actions]
    if isinstance(action, str):
        if action not in names:
            raise DirectionsError(f"unknown action {action!r}; expected one of {names}")
        return names.index(action)
    if not 0 <= int(action) < len(names):
        raise DirectionsError(f"action id {action} is out of range 0..{len(names) - 1}")
    return int(action)
