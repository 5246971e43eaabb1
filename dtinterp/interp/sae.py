"""Sparse autoencoders: a TopK SAE trained on stored activations, its metrics, splicing, and files.

A sparse autoencoder rewrites an activation ``x`` ``[d]`` as a sparse non-negative combination of
``n_latents`` learned directions (the *features*). This is the TopK SAE of Gao et al. 2024 ("Scaling and
evaluating sparse autoencoders"):

    ``z = TopK(ReLU((x - b_dec) @ W_enc + b_enc))``   (only the ``k`` largest latents stay non-zero)
    ``x_hat = z @ W_dec + b_dec``                      (rows of ``W_dec`` kept at unit norm)

``b_dec`` is subtracted before encoding (the pre-encoder bias) and initialised to the data mean; ``W_enc``
starts as ``W_dec.T``. Training minimises the squared error normalised by the data's variance with Adam,
plus the AuxK loss (coefficient 1/32): the ``aux_k`` largest pre-activations among *dead* latents (none
of whose activations was non-zero in the last ``dead_after`` tokens) must reconstruct the remaining
error, which pulls dead latents back to the data. After each step the decoder rows are renormalised, and
the gradient component parallel to each row is removed before the step. Batches come from an
:class:`~dtinterp.interp.activation_store.ActivationStore` (shuffled, one chunk in memory) or a tensor;
everything is seeded.

**Metrics** (:func:`evaluate_sae`): reconstruction MSE (per element), explained variance
``1 - sum|x - x_hat|^2 / sum|x - mean|^2``, L0 (non-zero latents per token, at most ``k``) and the share of
dead latents (never active over the evaluated tokens). :meth:`TopKSAE.splice_hooks` replaces the hook's
activation with its reconstruction at the SAE's token positions; :mod:`dtinterp.interp.effects` measures
what that does to the model's loss (:func:`~dtinterp.interp.effects.window_effect`) and success
(:func:`~dtinterp.interp.effects.played_effect`). :meth:`TopKSAE.feature_hooks` scales one feature's
contribution inside the real activation (0 ablates it, 2 doubles it), keeping the reconstruction error.

**Files.** :meth:`TopKSAE.save` writes a directory with ``sae.safetensors`` (``W_enc, b_enc, W_dec,
b_dec``) and ``sae.json`` (config, training settings and log, metrics, provenance, the weights' sha256);
no pickle. :meth:`TopKSAE.load` checks the digest.

**Why home-made.** SAELens (6.x) requires ``transformer_lens < 4``. EleutherAI's ``sparsify`` (1.3.3)
installs beside ``transformer_lens 4.3`` and torch 2.13 without downgrades, but its trainer only drives
HuggingFace ``PreTrainedModel`` layers, its package imports ``transformers``, ``datasets`` and
``accelerate`` on import, and it adds four packages (``schedulefree``, ``simple-parsing``, ``natsort``,
``docstring-parser``); the part we could use, its ``SparseCoder`` module, is the few lines above, and the
store, training loop, metrics, splicing and files would still be ours. This module is the same recipe in
one file with no new dependency.

**Naming one feature.** ``sae:DIR#F`` names latent ``F`` of the SAE saved in ``DIR`` (no whitespace or
``@`` in ``DIR``): the Play tab's interventions (:mod:`dtinterp.interp.interventions`) and the feature
dashboard take it. :func:`load_feature` reads it, keeping the last few SAEs read (keyed by path, size and
modification time, so a rewritten SAE is read again).

**Invariants** (tested): an SAE built to be exact (``W_enc = [I, -I]``, ``W_dec = [I; -I]``, ``k = d``)
reconstructs every activation, so splicing it in changes nothing; save -> load gives the same outputs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn
from tqdm.auto import tqdm

from dtinterp.errors import DtinterpError
from dtinterp.interp.activation_store import ActivationStore
from dtinterp.model.checkpoint import atomic_write_bytes, atomic_write_text

FORMAT_VERSION = 1
WEIGHTS_FILE = "sae.safetensors"
CONFIG_FILE = "sae.json"
#: How a feature is named in text: ``sae:DIR#F`` (:func:`load_feature`).
FEATURE_PREFIX = "sae:"


class SAEError(DtinterpError):
    """An SAE file that is missing or corrupt, or settings that cannot work."""


@dataclass
class SAEConfig:
    """What an SAE is: its shape and what it was trained on."""

    d_in: int
    """Width of the activations (``d_model`` for the residual stream)."""
    n_latents: int
    """Dictionary size."""
    k: int
    """Latents kept per token (TopK)."""
    hook: str = ""
    """The hook it reads and, spliced in, writes."""
    token_kind: str = "S"
    """The kind of token it was trained on."""
    positions: list[int] = field(default_factory=list)
    """Token positions (in the window) it was trained on: where :meth:`TopKSAE.splice_hooks` splices."""
    model: dict[str, Any] = field(default_factory=dict)
    """Provenance of the activations: the model's name and weights digest, the store's path."""

    def __post_init__(self) -> None:
        if self.d_in < 1 or self.n_latents < 1 or not 1 <= self.k <= self.n_latents:
            raise SAEError(
                f"SAE needs d_in >= 1, n_latents >= 1 and 1 <= k <= n_latents, got "
                f"d_in={self.d_in}, n_latents={self.n_latents}, k={self.k}"
            )


@dataclass
class SAETrainConfig:
    """How an SAE is trained."""

    steps: int = 2000
    """Optimiser steps."""
    batch_size: int = 4096
    """Tokens per step."""
    lr: float = 1e-3
    """Adam learning rate (constant after ``warmup_steps``, linear decay over the last 20%)."""
    warmup_steps: int = 50
    aux_k: int | None = None
    """Dead latents the AuxK loss uses (default ``d_in // 2``); 0 turns it off."""
    aux_coef: float = 1 / 32
    dead_after: int = 100_000
    """A latent is dead for AuxK after this many tokens without a non-zero activation."""
    seed: int = 0


class TopKSAE(nn.Module):
    """A TopK sparse autoencoder (see the module docstring for the equations)."""

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        d, n = cfg.d_in, cfg.n_latents
        self.W_enc = nn.Parameter(torch.zeros(d, n))
        self.b_enc = nn.Parameter(torch.zeros(n))
        self.W_dec = nn.Parameter(torch.zeros(n, d))
        self.b_dec = nn.Parameter(torch.zeros(d))
        self.log: dict[str, Any] = {}
        """Training settings and curve (filled by :func:`train_sae`), saved with the weights."""
        self.metrics: dict[str, Any] = {}
        """Evaluation results worth keeping with the SAE (saved with it)."""

    def init_from(self, x: Float[Tensor, "n d"], seed: int = 0) -> None:
        """Gao et al.'s initialisation: random unit decoder rows, ``W_enc = W_dec.T``, ``b_dec`` = data mean."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            w = torch.randn(self.cfg.n_latents, self.cfg.d_in, generator=g)
            self.W_dec.copy_(w / w.norm(dim=1, keepdim=True))
            self.W_enc.copy_(self.W_dec.T)
            self.b_enc.zero_()
            self.b_dec.copy_(x.float().mean(0))

    def pre_acts(self, x: Float[Tensor, "n d"]) -> Float[Tensor, "n L"]:
        """``ReLU((x - b_dec) @ W_enc + b_enc)``: every latent before TopK."""
        return F.relu((x - self.b_dec) @ self.W_enc + self.b_enc)

    def encode(self, x: Float[Tensor, "n d"]) -> tuple[Float[Tensor, "n k"], Int[Tensor, "n k"]]:
        """The ``k`` kept latents of each row: values (>= 0) and indices."""
        return self.pre_acts(x).topk(self.cfg.k, dim=-1, sorted=False)

    def decode(self, values: Float[Tensor, "n k"], indices: Int[Tensor, "n k"]) -> Float[Tensor, "n d"]:
        """``z @ W_dec + b_dec`` from the sparse ``(values, indices)``."""
        return F.embedding_bag(indices, self.W_dec, per_sample_weights=values, mode="sum") + self.b_dec

    def latents(self, x: Float[Tensor, "n d"]) -> Float[Tensor, "n L"]:
        """The dense latent vector ``z`` of each row (zeros outside its top k)."""
        values, indices = self.encode(x)
        return torch.zeros(x.shape[0], self.cfg.n_latents, dtype=values.dtype, device=x.device).scatter_(
            1, indices, values
        )

    def forward(self, x: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        """The reconstruction ``x_hat`` (any leading shape)."""
        flat = x.reshape(-1, self.cfg.d_in)
        return self.decode(*self.encode(flat)).reshape(x.shape)

    def splice_hooks(self, positions: Sequence[int] | None = None) -> list[tuple[str, Callable]]:
        """``[(hook, fn)]`` replacing the hook's activation by its reconstruction at ``positions``
        (default: the positions the SAE was trained on; all positions if none are recorded)."""
        if not self.cfg.hook:
            raise SAEError("the SAE records no hook: set cfg.hook to splice it in")
        pos = list(self.cfg.positions if positions is None else positions)

        def splice(act: Tensor, hook) -> Tensor:
            if not pos:
                return self(act.to(self.W_dec.dtype)).to(act.dtype)
            out = act.clone()
            out[:, pos] = self(act[:, pos].to(self.W_dec.dtype)).to(act.dtype)
            return out

        return [(self.cfg.hook, splice)]

    def feature_hooks(
        self, feature: int, scale: float = 0.0, positions: Sequence[int] | None = None
    ) -> list[tuple[str, Callable]]:
        """``[(hook, fn)]`` scaling one feature's contribution ``z_f(x) W_dec[f]`` by ``scale`` in the
        activation itself (0 ablates the feature, 2 doubles it; 1 changes nothing). The rest of the
        activation, reconstruction error included, is kept. ``positions`` as in :meth:`splice_hooks`."""
        if not 0 <= feature < self.cfg.n_latents:
            raise SAEError(f"feature {feature} is out of range 0..{self.cfg.n_latents - 1}")
        if not self.cfg.hook:
            raise SAEError("the SAE records no hook: set cfg.hook to edit its features")
        pos = list(self.cfg.positions if positions is None else positions)

        def edit(act: Tensor, hook) -> Tensor:
            x = act if not pos else act[:, pos]
            z = self.latents(x.reshape(-1, self.cfg.d_in).to(self.W_dec.dtype))[:, feature]
            delta = ((scale - 1.0) * z[:, None] * self.W_dec[feature]).reshape(x.shape).to(act.dtype)
            if not pos:
                return act + delta
            out = act.clone()
            out[:, pos] += delta
            return out

        return [(self.cfg.hook, edit)]

    @torch.no_grad()
    def _normalise_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def _remove_parallel_grad(self) -> None:
        if self.W_dec.grad is not None:
            parallel = (self.W_dec.grad * self.W_dec).sum(1, keepdim=True)
            self.W_dec.grad.sub_(parallel * self.W_dec)

    # ------------------------------------------------------------------ files

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``sae.safetensors`` and ``sae.json`` into ``directory`` (created; files replaced atomically)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        blob = st_save(tensors, metadata={"format": "pt", "dtinterp_sae_format_version": str(FORMAT_VERSION)})
        atomic_write_bytes(directory / WEIGHTS_FILE, blob)
        doc = {
            "format_version": FORMAT_VERSION,
            "config": asdict(self.cfg),
            "log": self.log,
            "metrics": self.metrics,
            "weights_sha256": hashlib.sha256(blob).hexdigest(),
        }
        atomic_write_text(directory / CONFIG_FILE, json.dumps(doc, indent=1, sort_keys=True) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> TopKSAE:
        """Read an SAE written by :meth:`save`; any problem is a one-line :class:`SAEError`."""
        directory = Path(directory)
        try:
            doc = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
            blob = (directory / WEIGHTS_FILE).read_bytes()
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SAEError(f"cannot read the SAE in {directory}: {exc}") from None
        if not isinstance(doc, dict) or doc.get("format_version") != FORMAT_VERSION:
            raise SAEError(f"{directory / CONFIG_FILE} is not a version-{FORMAT_VERSION} SAE config")
        if hashlib.sha256(blob).hexdigest() != doc.get("weights_sha256"):
            raise SAEError(f"{directory / WEIGHTS_FILE} does not match the sha256 in {CONFIG_FILE}")
        try:
            sae = cls(SAEConfig(**doc["config"]))
            sae.load_state_dict(st_load(blob))
        except (TypeError, KeyError, RuntimeError, SafetensorError) as exc:
            raise SAEError(
                f"{directory}: weights and config do not fit ({str(exc).splitlines()[0]})"
            ) from None
        sae.log, sae.metrics = doc.get("log", {}), doc.get("metrics", {})
        return sae.eval()


def feature_ref(directory: str | os.PathLike, feature: int) -> str:
    """The text ``sae:DIR#F`` that names latent ``feature`` of the SAE saved in ``directory``."""
    return f"{FEATURE_PREFIX}{directory}#{int(feature)}"


def load_feature(text: str) -> tuple[TopKSAE, int]:
    """The SAE and latent index named by ``sae:DIR#F``; a bad name, file or index is one :class:`SAEError`."""
    raw = str(text).strip()
    body = raw[len(FEATURE_PREFIX) :] if raw.startswith(FEATURE_PREFIX) else ""
    directory, sep, index = body.rpartition("#")
    if not sep or not directory or not index.isdigit():
        raise SAEError(
            f"{raw!r} does not name an SAE feature: expected {FEATURE_PREFIX}DIR#F, e.g. sae:runs/sae#17"
        )
    path = Path(directory).expanduser()
    try:
        st = (path / WEIGHTS_FILE).stat()
    except OSError as exc:
        raise SAEError(f"cannot read the SAE in {path}: {exc}") from None
    sae = _load_cached(str(path.resolve()), st.st_mtime_ns, st.st_size)
    feature = int(index)
    if feature >= sae.cfg.n_latents:
        raise SAEError(f"{raw!r}: the SAE in {path} has latents 0..{sae.cfg.n_latents - 1}, not {feature}")
    return sae, feature


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, mtime_ns: int, size: int) -> TopKSAE:
    """:meth:`TopKSAE.load`, once per version of the file (the Play tab parses its intervention every step)."""
    return TopKSAE.load(path).requires_grad_(False)


def _batches(source: ActivationStore | Tensor, hook: str, batch_size: int, seed: int) -> Iterator[Tensor]:
    """Endless shuffled batches of ``batch_size`` rows (a new shuffle each pass over the data)."""
    epoch = 0
    carry: Tensor | None = None
    while True:
        if isinstance(source, Tensor):
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            pieces: Iterator[Tensor] = iter(
                source[torch.randperm(source.shape[0], generator=g)].split(batch_size)
            )
        else:
            pieces = source.tokens(hook, batch_size, shuffle=True, seed=seed * 1_000_003 + epoch)
        for piece in pieces:
            piece = piece.float()
            if carry is not None:  # top up a short chunk tail so every batch is full
                piece = torch.cat([carry, piece])
                carry = None
            while piece.shape[0] >= batch_size:
                yield piece[:batch_size]
                piece = piece[batch_size:]
            carry = piece if piece.shape[0] else None
        epoch += 1


def train_sae(
    source: ActivationStore | Float[Tensor, "n d"],
    n_latents: int,
    k: int,
    train: SAETrainConfig | None = None,
    *,
    hook: str | None = None,
    progress: bool = True,
) -> TopKSAE:
    """Train a TopK SAE on a store's real tokens at ``hook`` (or on the rows of a tensor).

    The returned SAE records its hook, token kind and positions (from the store) and ``log``: the
    settings, tokens seen, seconds, and every 50 steps the training loss (normalised MSE) and the share of
    dead latents.
    """
    train = train or SAETrainConfig()
    if isinstance(source, ActivationStore):
        hook = hook or (source.hooks[0] if len(source.hooks) == 1 else None)
        if hook is None:
            raise SAEError(f"the store holds several hooks {source.hooks}: choose one with hook=")
        d_in = math.prod(source.shape(hook))
        meta = dict(
            hook=hook,
            token_kind=source.token_kind,
            positions=source.positions,
            model={**source.index["model"], "store": str(source.path)},
        )
    else:
        d_in = source.shape[-1]
        source = source.reshape(-1, d_in)
        meta = dict(hook=hook or "")
    if train.steps < 1 or train.batch_size < 1:
        raise SAEError(f"steps and batch_size must be >= 1, got {train.steps}, {train.batch_size}")
    sae = TopKSAE(SAEConfig(d_in=d_in, n_latents=n_latents, k=k, **meta))
    batches = _batches(source, meta["hook"], train.batch_size, train.seed)
    first = next(batches)
    sae.init_from(first, train.seed)
    aux_k = d_in // 2 if train.aux_k is None else train.aux_k
    opt = torch.optim.Adam(sae.parameters(), lr=train.lr, betas=(0.9, 0.999))
    decay_from = int(0.8 * train.steps)

    def lr_at(step: int) -> float:
        warm = min(1.0, (step + 1) / max(1, train.warmup_steps))
        decay = (
            1.0 if step < decay_from else max(0.0, (train.steps - step) / max(1, train.steps - decay_from))
        )
        return train.lr * warm * decay

    since_fired = torch.zeros(n_latents, dtype=torch.long)
    curve = []
    t0 = time.perf_counter()
    bar = tqdm(range(train.steps), desc=f"SAE {n_latents}x k={k}", disable=None if progress else True)
    x = first
    for step in bar:
        if step:
            x = next(batches)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        pre = sae.pre_acts(x)
        values, indices = pre.topk(k, dim=-1, sorted=False)
        recon = sae.decode(values, indices)
        err = x - recon
        variance = (x - x.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)
        loss = err.pow(2).sum(-1).mean() / variance
        dead = since_fired >= train.dead_after
        n_dead = int(dead.sum())
        if aux_k and n_dead:
            aux_vals, aux_idx = pre.masked_fill(~dead, -1.0).topk(min(aux_k, n_dead), dim=-1, sorted=False)
            aux_recon = F.embedding_bag(
                aux_idx, sae.W_dec, per_sample_weights=aux_vals.clamp_min(0), mode="sum"
            )
            loss = loss + train.aux_coef * (err.detach() - aux_recon).pow(2).sum(-1).mean() / variance
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sae._remove_parallel_grad()
        opt.step()
        sae._normalise_decoder()
        fired = torch.zeros(n_latents, dtype=torch.bool)
        fired[indices[values > 0]] = True
        since_fired = torch.where(fired, 0, since_fired + x.shape[0])
        if step % 50 == 0 or step == train.steps - 1:
            curve.append({"step": step, "loss": float(loss.detach()), "dead_share": n_dead / n_latents})
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}", dead=n_dead)
    bar.close()
    sae.log = {
        "train": asdict(train),
        "tokens_seen": train.steps * train.batch_size,
        "seconds": time.perf_counter() - t0,
        "curve": curve,
    }
    return sae.eval()


@dataclass
class SAEMetrics:
    """How well an SAE reconstructs activations it is evaluated on."""

    mse: float
    """Mean squared reconstruction error per element."""
    explained_variance: float
    """``1 - sum|x - x_hat|^2 / sum|x - mean(x)|^2``."""
    l0: float
    """Mean number of non-zero latents per token (at most k)."""
    dead_share: float
    """Share of latents never active over the evaluated tokens."""
    n_tokens: int
    frequency: Float[Tensor, "L"]
    """Share of the evaluated tokens on which each latent is active."""

    def summary(self) -> dict[str, float]:
        """The scalar metrics (JSON)."""
        return {
            "mse": self.mse,
            "explained_variance": self.explained_variance,
            "l0": self.l0,
            "dead_share": self.dead_share,
            "n_tokens": self.n_tokens,
        }


@torch.inference_mode()
def evaluate_sae(
    sae: TopKSAE,
    source: ActivationStore | Float[Tensor, "n d"],
    batch_size: int = 8192,
    max_tokens: int | None = None,
) -> SAEMetrics:
    """Reconstruction metrics over a store's real tokens at the SAE's hook (or a tensor's rows), in one
    streaming pass (the first ``max_tokens`` tokens when given)."""
    if isinstance(source, ActivationStore):
        batches: Iterator[Tensor] = source.tokens(sae.cfg.hook, batch_size)
    else:
        batches = iter(source.reshape(-1, sae.cfg.d_in).split(batch_size))
    n, sq_err = 0, 0.0
    s1 = torch.zeros(sae.cfg.d_in, dtype=torch.float64)
    s2 = 0.0
    active = torch.zeros(sae.cfg.n_latents, dtype=torch.long)
    l0 = 0
    for x in batches:
        if max_tokens is not None and n >= max_tokens:
            break
        if max_tokens is not None:
            x = x[: max_tokens - n]
        x = x.float()
        values, indices = sae.encode(x)
        recon = sae.decode(values, indices)
        sq_err += float((x - recon).double().pow(2).sum())
        s1 += x.double().sum(0)
        s2 += float(x.double().pow(2).sum())
        on = values > 0
        l0 += int(on.sum())
        active += torch.bincount(indices[on], minlength=sae.cfg.n_latents)
        n += x.shape[0]
    if n == 0:
        raise SAEError("no tokens to evaluate the SAE on")
    total_var = s2 - float((s1 * s1).sum()) / n
    return SAEMetrics(
        mse=sq_err / (n * sae.cfg.d_in),
        explained_variance=1 - sq_err / total_var if total_var > 0 else float("nan"),
        l0=l0 / n,
        dead_share=float((active == 0).float().mean()),
        n_tokens=n,
        frequency=active.float() / n,
    )


__all__ = [
    "SAEConfig",
    "SAEError",
    "SAEMetrics",
    "SAETrainConfig",
    "TopKSAE",
    "FEATURE_PREFIX",
    "evaluate_sae",
    "feature_ref",
    "load_feature",
    "train_sae",
]
