"""Where independent tasks run: a local process pool or a Ray cluster, behind one interface.

:class:`Backend` has one verb, ``map(fn, items)``: call ``fn`` on every item somewhere and return the
results in input order. :class:`LocalBackend` runs the calls in this process (``workers=1``) or in a
spawn-context process pool; :class:`RayBackend` runs each call as a Ray task (a dead worker is retried, so
a lost node costs time, not results) and brings results back as Ray objects: nothing is shared through
files. A value every task needs (a checkpoint's bytes, the settings of a collection) is passed once as
``shared`` and each call receives it as ``fn(shared, item)``: Ray stores it once in its object store.

On top of ``map``, the package's embarrassingly parallel work is cut into tasks whose results do not
depend on where they ran or how many ran at once:

- :func:`collect_parallel`: episode ``i`` is seeded by ``(seed, i)`` whatever chunk it lands in, so
  every backend and worker count gives the byte-identical dataset of :func:`~dtinterp.data.collect.collect`.
- :func:`evaluate_parallel` / :func:`calibrate_parallel`: chunks of env seeds per target return, each
  played by the existing rollout from a copy of the checkpoint shipped to the worker; results are merged
  in seed order and summarised by the existing ``summarize``, so the numbers are those of
  :func:`~dtinterp.train.evaluate.evaluate`.
- :func:`map_windows`: an analysis over many windows, reduced per chunk on the worker and merged in
  chunk order on the driver (mean, sum, concatenation, top-k), so the output is the local run's.

Chunks have a fixed size, never derived from the number of workers: the same chunks are computed
whatever runs them, which is what makes the results exact and not just close.
"""

from __future__ import annotations

import abc
import hashlib
import logging
import os
import socket
import tempfile
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from dtinterp.errors import ConfigError, DtinterpError

if TYPE_CHECKING:
    from dtinterp.data.dataset import TrajectoryDataset
    from envs.spec import EnvSpec

# Heavy modules (torch, the model, the env stack, ray) are imported where used: a worker process imports
# only what its task needs, and a missing optional dependency is reported only when it is needed.

#: Episodes per collection task (a chunk is a few seconds of work: the progress bar moves, a retry is cheap).
COLLECT_CHUNK = 64
#: Backend names accepted by :func:`make_backend` (and the CLI's ``--backend``).
BACKENDS = ("local", "ray")
RAY_INSTALL_HINT = "Ray is not installed: pip install dtinterp[ray]"
_NO_SHARED = object()


class Backend(abc.ABC):
    """Runs independent calls somewhere; results always come back in input order."""

    name: str = "backend"

    @property
    @abc.abstractmethod
    def workers(self) -> int:
        """How many calls can run at once."""

    @abc.abstractmethod
    def map(
        self,
        fn: Callable[..., Any],
        items: Sequence[Any],
        progress: bool = False,
        desc: str = "tasks",
        shared: Any = _NO_SHARED,
    ) -> list[Any]:
        """``[fn(item) for item in items]`` (``fn(shared, item)`` when ``shared`` is given), in parallel.

        ``fn`` must be picklable (a module-level function or a ``functools.partial`` of one). ``progress``
        shows a bar over tasks. The first failing call's exception is raised.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release workers (a pool's processes, a Ray instance this backend started)."""

    def describe(self) -> str:
        """One line for logs and reports."""
        return f"{self.name} ({self.workers} workers)"

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalBackend(Backend):
    """This machine: calls run in this process (``workers=1``) or in a spawn-context process pool.

    The pool starts on the first parallel ``map`` and is kept until :meth:`close`, so repeated maps do
    not pay for starting workers (and importing torch in them) again.
    """

    name = "local"

    def __init__(self, workers: int = 1) -> None:
        if not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")
        self._workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    @property
    def workers(self) -> int:
        return self._workers

    def map(
        self,
        fn: Callable[..., Any],
        items: Sequence[Any],
        progress: bool = False,
        desc: str = "tasks",
        shared: Any = _NO_SHARED,
    ) -> list[Any]:
        items = list(items)
        args = [(item,) if shared is _NO_SHARED else (shared, item) for item in items]
        bar = tqdm(total=len(items), desc=desc, unit="task", disable=None if progress else True)
        try:
            if self._workers == 1 or len(items) <= 1:
                out = []
                for a in args:
                    out.append(fn(*a))
                    bar.update(1)
                return out
            return self._map_pool(fn, args, bar)
        finally:
            bar.close()

    def _map_pool(self, fn: Callable[..., Any], args: list[tuple], bar: tqdm) -> list[Any]:
        import multiprocessing

        with self._lock:
            if self._pool is None:
                ctx = multiprocessing.get_context("spawn")
                self._pool = ProcessPoolExecutor(max_workers=self._workers, mp_context=ctx)
            pool = self._pool
        futures: list[Future] = [pool.submit(fn, *a) for a in args]
        try:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when="FIRST_COMPLETED")
                for fut in done:
                    fut.result()  # the first failure is raised now, not after every task ran
                bar.update(len(done))
            return [fut.result() for fut in futures]
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


class RayBackend(Backend):
    """Ray tasks on a cluster (``address``, else ``RAY_ADDRESS``) or on a local Ray instance started here.

    Each call is one task reserving ``cpus_per_task`` CPUs; ``max_retries`` re-runs a task whose worker
    died (tasks are pure functions of their arguments, so a retry gives the same result). If this process
    is already connected to Ray, that connection is used. A missing Ray or an unreachable address is a
    one-line :class:`~dtinterp.errors.DtinterpError` raised before any work starts.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        num_cpus: int | None = None,
        max_retries: int = 3,
        runtime_env: dict[str, Any] | None = None,
        connect_timeout_s: float = 10.0,
        cpus_per_task: float = 1,
    ) -> None:
        ray = import_ray()
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        address = address or os.environ.get("RAY_ADDRESS") or None
        if address is not None and num_cpus is not None:
            raise ConfigError(
                "num_cpus sizes a local Ray instance: it cannot be combined with a cluster address"
            )
        self.address = address
        self.max_retries = max_retries
        self._ray = ray
        self._owned = False
        if address is not None:
            _probe(address, connect_timeout_s)
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"runtime_env": runtime_env, "logging_level": logging.WARNING}
            if address is None:
                kwargs.update(num_cpus=num_cpus, include_dashboard=False)
            try:
                ray.init(address=address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
                where = f"at {address!r}" if address else "locally"
                raise DtinterpError(f"cannot start or reach Ray {where}: {_one_line(exc)}") from None
            self._owned = True
        self.cpus_per_task = cpus_per_task
        self._task = ray.remote(_apply).options(max_retries=max_retries, num_cpus=cpus_per_task)

    @property
    def workers(self) -> int:
        return max(int(self._ray.cluster_resources().get("CPU", 1) // self.cpus_per_task), 1)

    def map(
        self,
        fn: Callable[..., Any],
        items: Sequence[Any],
        progress: bool = False,
        desc: str = "tasks",
        shared: Any = _NO_SHARED,
    ) -> list[Any]:
        ray = self._ray
        has_shared = shared is not _NO_SHARED
        shared_ref = ray.put(shared) if has_shared else None  # stored once, read by every task
        refs = [self._task.remote(fn, has_shared, shared_ref, item) for item in items]
        bar = tqdm(total=len(refs), desc=desc, unit="task", disable=None if progress else True)
        pending = list(refs)
        try:
            while pending:
                # Whatever finished within the timeout: one wait per batch, not per task.
                done, pending = ray.wait(pending, num_returns=len(pending), timeout=0.5)
                ray.get(done)  # the first failure is raised now, not after every task ran
                bar.update(len(done))
            return ray.get(refs)
        except ray.exceptions.RayError as exc:
            # Cancel only the tasks not seen finished: Ray 2.x can abort the driver process ("Tried to
            # complete task that was not pending") when a task whose result is already in is cancelled.
            _, unfinished = ray.wait(pending, num_returns=len(pending), timeout=0) if pending else ([], [])
            for ref in unfinished:
                ray.cancel(ref)
            cause = getattr(exc, "cause", None)
            if isinstance(cause, DtinterpError):
                raise cause from None  # a user error stays one line
            raise
        finally:
            bar.close()

    def describe(self) -> str:
        where = self.address or "a local Ray instance"
        return f"ray at {where} ({self.workers} CPUs, max_retries={self.max_retries})"

    def close(self) -> None:
        if self._owned and self._ray.is_initialized():
            self._ray.shutdown()
        self._owned = False


def make_backend(kind: str = "local", workers: int = 1, ray_address: str | None = None) -> Backend:
    """The backend the CLI's ``--backend``, ``--workers`` and ``--ray-address`` name.

    On Ray, ``workers > 1`` sizes the local Ray instance started when no cluster address is given.
    """
    if kind not in BACKENDS:
        raise ConfigError(f"--backend {kind!r}: expected one of {', '.join(BACKENDS)}")
    if kind == "local":
        if ray_address is not None:
            raise ConfigError("--ray-address needs --backend ray")
        return LocalBackend(workers)
    local = ray_address is None and not os.environ.get("RAY_ADDRESS")
    return RayBackend(address=ray_address, num_cpus=workers if local and workers > 1 else None)


def import_ray() -> Any:
    """The ``ray`` module, or a one-line :class:`DtinterpError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise DtinterpError(RAY_INSTALL_HINT) from None
    return ray


def _apply(fn: Callable[..., Any], has_shared: bool, shared: Any, item: Any) -> Any:
    """The body of every Ray task (Ray resolves ``shared`` from its object store)."""
    return fn(shared, item) if has_shared else fn(item)


def _probe(address: str, timeout_s: float) -> None:
    """Fail fast, in one line, when the host and port of a cluster address do not accept connections."""
    if address in ("auto", "local"):
        return
    parts = urllib.parse.urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise DtinterpError(
            f"Ray address {address!r} is malformed (expected HOST:PORT or ray://HOST:PORT)"
        ) from None
    if host is None or port is None:
        return  # let Ray resolve it (and report in one line if it cannot)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise DtinterpError(
            f"cannot reach the Ray cluster at {address!r} ({why}): check --ray-address / RAY_ADDRESS"
        ) from None


# ---------------------------------------------------------------------------------------------- chunks


def chunk_bounds(n: int, size: int) -> list[tuple[int, int]]:
    """``[(0, size), (size, 2 * size), ..., (.., n)]``: contiguous chunks of at most ``size`` items."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    return [(lo, min(lo + size, n)) for lo in range(0, n, size)]


# ---------------------------------------------------------------------------------------------- collect


def collect_parallel(
    spec: EnvSpec,
    episodes: int,
    policy: str,
    seed: int,
    backend: Backend | None = None,
    policy_params: dict[str, Any] | None = None,
    chunk_size: int = COLLECT_CHUNK,
    progress: bool = True,
    facts: bool = True,
) -> TrajectoryDataset:
    """:func:`~dtinterp.data.collect.collect` on ``backend``: the same dataset, byte for byte, anywhere.

    ``chunk_size`` episodes make one task; ``facts`` records the env's ground-truth facts, as in ``collect``.
    """
    from dtinterp.data.collect import assemble, prepare

    backend = backend or LocalBackend()
    params, policy_meta = prepare(spec, episodes, policy, policy_params)
    bounds = chunk_bounds(episodes, chunk_size)
    chunks = backend.map(
        _collect_task,
        bounds,
        progress=progress,
        desc=f"collect {spec.env_id}",
        shared=(spec.to_dict(), policy, params, seed, facts),
    )
    return assemble(spec, policy_meta, seed, episodes, chunks)


def _collect_task(shared: tuple, bounds: tuple[int, int]) -> dict[str, np.ndarray]:
    from dtinterp.data.collect import collect_chunk

    spec_dict, policy, params, seed, facts = shared
    return collect_chunk(spec_dict, policy, params, seed, bounds[0], bounds[1], facts)


# ---------------------------------------------------------------------------------------------- evaluate


@dataclass(frozen=True)
class ShippedCheckpoint:
    """A checkpoint's files as bytes: what a worker needs to load it, with no shared filesystem."""

    name: str
    files: dict[str, bytes] = field(repr=False)
    sha256: str

    @classmethod
    def read(cls, directory: str | os.PathLike) -> ShippedCheckpoint:
        """Read (and validate, by loading it once here) the checkpoint in ``directory``."""
        from dtinterp.model.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_checkpoint

        ckpt = load_checkpoint(directory)  # one-line CheckpointError for a bad directory, before any task
        files = {name: (Path(directory) / name).read_bytes() for name in (CONFIG_FILE, WEIGHTS_FILE)}
        digest = hashlib.sha256(files[WEIGHTS_FILE] + files[CONFIG_FILE]).hexdigest()
        _remember(digest, ckpt)  # tasks run in this process (workers=1) reuse it
        return cls(name=ckpt.name, files=files, sha256=digest)


#: Checkpoints loaded in this (worker) process, by content digest: tasks of one evaluation load it once.
_LOADED: dict[str, Any] = {}


def load_shipped(shipped: ShippedCheckpoint) -> Any:
    """The :class:`~dtinterp.model.checkpoint.Checkpoint` of ``shipped`` (via ``load_checkpoint``)."""
    from dtinterp.model.checkpoint import load_checkpoint

    if shipped.sha256 not in _LOADED:
        with tempfile.TemporaryDirectory(prefix="dtinterp-ckpt-") as tmp:
            for name, data in shipped.files.items():
                (Path(tmp) / name).write_bytes(data)
            _remember(shipped.sha256, load_checkpoint(tmp, name=shipped.name))
    return _LOADED[shipped.sha256]


def _remember(digest: str, ckpt: Any) -> None:
    _LOADED.clear()  # one model per worker process
    _LOADED[digest] = ckpt


def evaluate_parallel(
    checkpoint_dir: str | os.PathLike,
    rtgs: Sequence[float],
    episodes: int,
    seed: int,
    num_envs: int = 32,
    sample: bool = False,
    backend: Backend | None = None,
    chunk_size: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """:func:`~dtinterp.train.evaluate.evaluate` of the checkpoint in ``checkpoint_dir`` on ``backend``.

    Each task plays a chunk of ``chunk_size`` (default ``num_envs``) consecutive env seeds at one target
    on the CPU; the per-target episode lists are merged in seed order and summarised exactly as
    ``evaluate`` does, so the result is the same dict with the same numbers.
    """
    from dtinterp.train.evaluate import CONFIDENCE, check_rtgs, summarize

    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    backend = backend or LocalBackend()
    shipped = ShippedCheckpoint.read(checkpoint_dir)
    ckpt = load_shipped(shipped)
    rtgs = check_rtgs(rtgs, "target return", ckpt)  # as evaluate: before any episode is played
    seeds = list(range(seed, seed + episodes))
    size = chunk_size or num_envs
    items = [(float(rtg), seeds[lo:hi]) for rtg in rtgs for lo, hi in chunk_bounds(episodes, size)]
    outs = backend.map(
        _rollout_task, items, progress=progress, desc="evaluate", shared=(shipped, num_envs, sample, seed)
    )
    per_chunk = len(chunk_bounds(episodes, size))
    results = []
    for k, rtg in enumerate(rtgs):
        merged = [r for chunk in outs[k * per_chunk : (k + 1) * per_chunk] for r in chunk]
        results.append(summarize(rtg, merged))
    return {
        "env_spec": ckpt.env_spec.to_dict(),
        "rtg_scale": ckpt.rtg_scale,
        "episodes": episodes,
        "seed": seed,
        "sample": sample,
        "confidence": CONFIDENCE,
        "results": results,
    }


def calibrate_parallel(
    checkpoint_dir: str | os.PathLike,
    rtg_min: float,
    rtg_max: float,
    points: int,
    episodes: int,
    seed: int,
    num_envs: int = 32,
    sample: bool = False,
    backend: Backend | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """:func:`~dtinterp.train.calibrate.calibrate` on ``backend``: ``points`` targets from min to max."""
    if not rtg_min < rtg_max:
        raise ValueError(f"rtg_min must be < rtg_max, got {rtg_min} >= {rtg_max}")
    if points < 2:
        raise ValueError(f"points must be >= 2, got {points}")
    targets = np.linspace(rtg_min, rtg_max, points).tolist()
    result = evaluate_parallel(
        checkpoint_dir, targets, episodes, seed, num_envs, sample, backend=backend, progress=progress
    )
    result.update(rtg_min=float(rtg_min), rtg_max=float(rtg_max), points=int(points))
    return result


def _rollout_task(shared: tuple, item: tuple[float, list[int]]) -> list[Any]:
    """Play one chunk of seeds at one target; one torch thread (workers already run side by side)."""
    import torch

    from dtinterp.play.rollout import rollout

    shipped, num_envs, sample, sample_seed = shared
    rtg, seeds = item
    ckpt = load_shipped(shipped)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return rollout(ckpt, rtg, seeds, num_envs, sample, sample_seed, progress=False)
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class Combiner:
    """How per-window outputs ``[n, ...]`` of the chunks are reduced: on the worker, then across chunks.

    ``kind`` is ``mean`` or ``sum`` (over windows, accumulated in float64 for floats), ``concat`` (rows
    in window order) or ``top_k`` (the ``k`` largest, or smallest, of 1-d scores, ties to the earlier
    window: returns ``(indices, values)``).
    """

    kind: str
    k: int = 0
    largest: bool = True

    def __post_init__(self) -> None:
        if self.kind not in ("mean", "sum", "concat", "top_k"):
            raise ValueError(f"unknown combiner {self.kind!r} (mean, sum, concat or top_k)")
        if self.kind == "top_k" and self.k < 1:
            raise ValueError(f"top_k needs k >= 1, got {self.k}")

    def reduce(self, out: np.ndarray) -> tuple[Any, int]:
        """The partial result of one chunk's outputs, and the chunk's number of windows."""
        out = np.asarray(out)
        n = len(out)
        if self.kind in ("mean", "sum"):
            acc = np.float64 if out.dtype.kind in "fc" or self.kind == "mean" else None
            return out.sum(axis=0, dtype=acc), n
        if self.kind == "concat":
            return out, n
        if out.ndim != 1:
            raise ValueError(f"top_k needs 1-d scores per window, got shape {out.shape}")
        idx = self._order(out, np.arange(n))[: self.k]
        return (idx, out[idx]), n

    def merge(self, partials: list[tuple[Any, int]]) -> Any:
        """The combined result of the chunks' partials, taken in chunk order."""
        counts = [n for _, n in partials]
        if self.kind in ("mean", "sum"):
            total = partials[0][0]
            for p, _ in partials[1:]:
                total = total + p
            return total / sum(counts) if self.kind == "mean" else total
        if self.kind == "concat":
            return np.concatenate([p for p, _ in partials])
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
        idx = np.concatenate([p[0] + off for (p, _), off in zip(partials, offsets)]).astype(np.int64)
        vals = np.concatenate([p[1] for p, _ in partials])
        keep = self._order(vals, idx)[: self.k]
        return idx[keep], vals[keep]

    def _order(self, values: np.ndarray, index: np.ndarray) -> np.ndarray:
        """Positions sorted best-first, ties broken by the lower window index."""
        key = -values if self.largest else values
        return np.lexsort((index, key))


MEAN = Combiner("mean")
SUM = Combiner("sum")
CONCAT = Combiner("concat")


def top_k(k: int, largest: bool = True) -> Combiner:
    """The ``k`` best windows by a 1-d score: ``(indices, values)``, indices counted over all chunks."""
    return Combiner("top_k", k=k, largest=largest)


def map_windows(
    fn: Callable[..., np.ndarray],
    windows_chunks: Sequence[Any],
    combine: str | Combiner = "concat",
    backend: Backend | None = None,
    shared: Any = _NO_SHARED,
    progress: bool = False,
) -> Any:
    """``fn`` on each chunk of windows (``fn(chunk)`` or ``fn(shared, chunk)`` -> ``[n, ...]``), combined.

    ``combine`` is ``"mean"``, ``"sum"``, ``"concat"`` or a :class:`Combiner` such as ``top_k(10)``.
    Each chunk is reduced where it ran and only partials travel back; they are merged in chunk order,
    so for the same chunks the result is identical on every backend and worker count.
    """
    combiner = combine if isinstance(combine, Combiner) else Combiner(combine)
    backend = backend or LocalBackend()
    has_shared = shared is not _NO_SHARED
    partials = backend.map(
        _window_task,
        list(windows_chunks),
        progress=progress,
        desc="windows",
        shared=(fn, combiner, has_shared, shared if has_shared else None),
    )
    if not partials:
        raise ValueError("map_windows needs at least one chunk of windows")
    return combiner.merge(partials)


def _window_task(shared: tuple, chunk: Any) -> tuple[Any, int]:
    fn, combiner, has_inner, inner = shared
    out = fn(inner, chunk) if has_inner else fn(chunk)
    return combiner.reduce(out)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


__all__ = [
    "BACKENDS",
    "CONCAT",
    "MEAN",
    "SUM",
    "Backend",
    "Combiner",
    "LocalBackend",
    "RayBackend",
    "ShippedCheckpoint",
    "calibrate_parallel",
    "chunk_bounds",
    "collect_parallel",
    "evaluate_parallel",
    "import_ray",
    "load_shipped",
    "make_backend",
    "map_windows",
    "top_k",
]
