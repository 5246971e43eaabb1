"""The training loop of a decision transformer, readable top to bottom.

One step: sample a batch of windows (numpy, generator seeded by ``(seed, step)``), forward, cross-entropy
on every real action (padding masked out), backward, clip the gradient norm, AdamW step at the scheduled
learning rate (linear warmup, then cosine decay to ``min_lr_ratio * lr``).

Resumability. Every random draw of a step is a function of ``(seed, step)`` (batches) or of the saved
torch RNG state, the learning rate is a pure function of the step, and a checkpoint saves the weights,
the AdamW moments and the RNG states, so a run stopped at step M and resumed ends at exactly the same
weights as an uninterrupted run (bit-exact on CPU; CUDA's atomic-add kernels may differ in the last bit).

A run directory holds:

==========================  =============================================================================
``model.safetensors``       latest weights, and ``config.json`` their config and meta (model.checkpoint)
``train_state.safetensors`` AdamW moments and torch RNG states (tensors, no pickle)
``train_state.json``        step, optimizer hyperparameters per parameter group, elapsed time, and the
                            sha256 of the two weight files it belongs with (written last: the commit)
``metrics.jsonl``           one JSON object per logged step (and per periodic evaluation)
``model_card.md``           what the model is and how it was made (model_card.py)
==========================  =============================================================================
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

import dtinterp
from dtinterp.data.dataset import TrajectoryDataset
from dtinterp.data.windows import WindowSampler
from dtinterp.errors import CheckpointError, ConfigError
from dtinterp.model import DTInputs, HookedDecisionTransformer
from dtinterp.model.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    atomic_write_text,
    load_checkpoint,
    read_checkpoint_config,
    save_checkpoint,
)
from dtinterp.train.config import TrainConfig
from dtinterp.train.model_card import write_model_card
from envs.spec import EnvSpec, env_facts

METRICS_FILE = "metrics.jsonl"
STATE_TENSORS_FILE = "train_state.safetensors"
STATE_JSON_FILE = "train_state.json"
RUN_FILES = (WEIGHTS_FILE, CONFIG_FILE, STATE_TENSORS_FILE, STATE_JSON_FILE, METRICS_FILE)
#: Periodic evaluation plays env seeds EVAL_SEED, EVAL_SEED + 1, ... (far from collection seeds).
EVAL_SEED = 1_000_000
#: Parameters that are matrices of linear maps get weight decay; every other one (biases, norms,
#: embedding tables such as W_state, W_dir, W_rtg, action/time embeddings) does not.
_DECAYED_NAMES = ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_out", "W_U")
#: Optimizer group hyperparameters restored on resume (kernel choices like ``fused`` follow the device).
_HYPER_KEYS = ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize")


@dataclass
class TrainResult:
    """Summary of a finished (or stopped) run."""

    out_dir: Path
    step: int
    """Optimizer steps done in total (including earlier segments of a resumed run)."""
    loss: float
    """Mean training loss over the last logging interval."""
    acc: float
    """Action accuracy over the last logging interval (real timesteps only)."""
    wall_time_s: float
    """Training wall time of all segments of the run."""
    samples_per_s: float
    """Windows per second in this segment."""
    n_params: int
    stopped_early: bool
    """True when ``should_stop`` ended the run before ``cfg.steps`` (it can be resumed)."""


# ------------------------------------------------------------------ pieces of a step


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then cosine to min_lr_ratio*lr."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_steps = max(cfg.steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / decay_steps, 1.0)
    min_lr = cfg.lr * cfg.min_lr_ratio
    return min_lr + 0.5 * (cfg.lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def is_decayed(name: str, module: nn.Module) -> bool:
    """Whether parameter ``name`` (leaf name within ``module``) gets weight decay."""
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
        return name == "weight"
    return name in _DECAYED_NAMES


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: ``[decay, no_decay]``, each with the parameter names in ``names``."""
    decay: list[tuple[str, nn.Parameter]] = []
    no_decay: list[tuple[str, nn.Parameter]] = []
    for mod_name, module in model.named_modules():
        for leaf, p in module.named_parameters(recurse=False):
            full = f"{mod_name}.{leaf}" if mod_name else leaf
            (decay if is_decayed(leaf, module) else no_decay).append((full, p))
    return [
        {"params": [p for _, p in decay], "names": [n for n, _ in decay], "weight_decay": weight_decay},
        {"params": [p for _, p in no_decay], "names": [n for n, _ in no_decay], "weight_decay": 0.0},
    ]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the decay / no-decay groups (fused kernels on CUDA)."""
    fused = next(model.parameters()).device.type == "cuda"
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas), eps=1e-8, fused=fused
    )


def batch_rng(seed: int, step: int) -> np.random.Generator:
    """The generator that draws step ``step``'s batch: a pure function of (seed, step), hence resumable."""
    return np.random.default_rng([seed, step])


def loss_and_correct(logits: Tensor, actions: Tensor, pad_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean cross-entropy over real timesteps, number of correct argmax predictions, number of real ones.

    ``logits [B, K, A]``, ``actions [B, K]`` (pad action at padding), ``pad_mask [B, K]``.
    """
    target = actions.masked_fill(~pad_mask, -100)  # [B, K]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)
    correct = ((logits.argmax(-1) == actions) & pad_mask).sum()
    return loss, correct, pad_mask.sum()


def train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, batch: DTInputs, lr: float, grad_clip: float
) -> tuple[Tensor, Tensor, Tensor]:
    """One optimizer step on ``batch`` at learning rate ``lr``; returns (loss, correct, n_real) on device.

    Nothing here waits for the device (no ``.item()``), so GPU steps queue back to back.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    logits = model(batch)  # [B, K, A]
    loss, correct, n_real = loss_and_correct(logits, batch.actions, batch.pad_mask)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return loss.detach(), correct, n_real


# ------------------------------------------------------------------ the loop


def dataset_lengths(data: TrajectoryDataset) -> dict[str, float]:
    """Episode-length statistics of the training data (``min``, ``mean``, ``p95``, ``max`` steps).

    Recorded in the checkpoint metadata so analyses default to the episode clock the model was trained
    on (a 7-14 step task studied over the env's 245-step limit is mostly timesteps never seen).
    """
    lengths = data.episode_lengths()
    if lengths.size == 0:
        return {"min": 0, "mean": 0.0, "p95": 0.0, "max": 0}
    return {
        "min": int(lengths.min()),
        "mean": round(float(lengths.mean()), 3),
        "p95": round(float(np.percentile(lengths, 95)), 3),
        "max": int(lengths.max()),
    }


def train(
    cfg: TrainConfig,
    data: TrajectoryDataset,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    should_stop: Callable[[int], bool] | None = None,
    progress: bool = True,
    data_path: str | None = None,
) -> TrainResult:
    """Train a decision transformer on ``data`` for ``cfg.steps`` steps, checkpointing into ``out_dir``.

    ``resume`` continues the run saved in ``out_dir`` (its config and dataset must match).
    ``should_stop(steps_done)`` is asked after every step; when it answers True the run checkpoints and
    returns early (resumable). ``data_path`` is only recorded in the model card.
    """
    out_dir = Path(out_dir)
    spec = data.env_spec
    W, H = data.obs.shape[1:3]
    facts = env_facts(spec)
    max_steps, n_actions = facts.max_steps, facts.n_actions
    if data.n_transitions and int(data.actions.max()) >= n_actions:
        raise ConfigError(
            f"dataset has action {int(data.actions.max())} but {spec.env_id} has {n_actions} actions"
        )
    model_cfg = cfg.model_config(obs_shape=(W, H), n_actions=n_actions, max_timestep=max_steps)
    if not resume and any((out_dir / f).exists() for f in RUN_FILES):
        raise ConfigError(f"{out_dir} already holds a training run (pass --resume to continue it)")

    # Model and optimizer: a fresh seeded init, or the saved state of this run.
    torch.manual_seed(cfg.seed)
    if resume:
        model, meta = _load_run(out_dir, cfg, data, model_cfg.to_dict())
        optimizer = make_optimizer(model, cfg)
        start, elapsed_before = _load_train_state(out_dir, model, optimizer)
    else:
        model = HookedDecisionTransformer(model_cfg)
        optimizer = make_optimizer(model, cfg)
        start, elapsed_before, meta = 0, 0.0, {}
    model.train()
    device = next(model.parameters()).device
    n_params = sum(p.numel() for p in model.parameters())

    meta = {
        **meta,
        "env_spec": spec.to_dict(),
        "rtg_scale": cfg.rtg_scale,
        "train": cfg.to_dict(),
        "dataset": data.fingerprint(),
        "dataset_lengths": dataset_lengths(data),
        "dataset_metadata": data.metadata,
        "run": {**meta.get("run", {}), "n_params": n_params, "device": str(device), "data_path": data_path},
    }
    sampler = WindowSampler(
        data, cfg.context_len, cfg.rtg_scale, n_actions, model_cfg.max_timestep, cfg.p_episode_end
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = _MetricsLog(out_dir / METRICS_FILE, keep_upto=start)
    logger = _open_logger(cfg, out_dir)

    t0 = time.perf_counter()
    t_log, step_log = t0, start
    loss_sum = torch.zeros((), device=device)  # accumulated on device: one sync per log line
    correct_sum = torch.zeros((), device=device, dtype=torch.long)
    real_sum = torch.zeros((), device=device, dtype=torch.long)
    prev = meta.get("run", {})  # a resumed run that is already complete reports its saved numbers
    last = {"loss": prev.get("final_loss", float("nan")), "acc": prev.get("final_acc", float("nan"))}
    step = start
    bar = tqdm(
        total=cfg.steps, initial=start, desc="train", unit="step", disable=not progress, dynamic_ncols=True
    )
    try:
        while step < cfg.steps:
            lr = lr_at(step, cfg)
            batch = sampler.sample(cfg.batch_size, batch_rng(cfg.seed, step)).to(device)
            loss, correct, n_real = train_step(model, optimizer, batch, lr, cfg.grad_clip)
            step += 1
            loss_sum += loss
            correct_sum += correct
            real_sum += n_real
            bar.update(1)

            stop = should_stop is not None and should_stop(step)
            if step % cfg.log_every == 0 or step == cfg.steps or stop:
                now = time.perf_counter()
                n = step - step_log
                last = {
                    "loss": loss_sum.item() / n,
                    "acc": correct_sum.item() / max(real_sum.item(), 1),
                }
                row = {
                    "step": step,
                    **last,
                    "lr": lr,
                    "samples_per_s": n * cfg.batch_size / max(now - t_log, 1e-9),
                    "elapsed": elapsed_before + now - t0,
                }
                metrics.write(row)
                logger.log(row)
                bar.set_postfix(
                    loss=f"{row['loss']:.4f}", acc=f"{row['acc']:.3f}", sps=f"{row['samples_per_s']:.0f}"
                )
                t_log, step_log = now, step
                loss_sum.zero_(), correct_sum.zero_(), real_sum.zero_()
            if cfg.eval_every and step % cfg.eval_every == 0:
                row = {"step": step, "eval": evaluate_during_training(model, spec, cfg)}
                metrics.write(row)
                logger.log(row)
            if stop or step == cfg.steps or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                elapsed = elapsed_before + time.perf_counter() - t0
                run = {
                    **meta["run"],
                    "wall_time_s": elapsed,
                    "final_loss": last["loss"],
                    "final_acc": last["acc"],
                }
                meta = {**meta, "step": step, "run": run}
                save_run(out_dir, model, optimizer, meta, elapsed)
            if stop:
                break
    finally:
        bar.close()
        logger.close()

    seg_time = time.perf_counter() - t0
    return TrainResult(
        out_dir=out_dir,
        step=step,
        loss=last["loss"],
        acc=last["acc"],
        wall_time_s=elapsed_before + seg_time,
        samples_per_s=(step - start) * cfg.batch_size / max(seg_time, 1e-9),
        n_params=n_params,
        stopped_early=step < cfg.steps,
    )


@torch.no_grad()
def evaluate_during_training(model: HookedDecisionTransformer, spec: EnvSpec, cfg: TrainConfig) -> dict:
    """Greedy rollouts at each ``cfg.eval_rtg``: mean return, success rate and length per target."""
    from dtinterp.model.checkpoint import Checkpoint
    from dtinterp.play.rollout import rollout

    was_training = model.training
    model.eval()
    ckpt = Checkpoint.from_model(model, {"env_spec": spec.to_dict(), "rtg_scale": cfg.rtg_scale})
    seeds = list(range(EVAL_SEED, EVAL_SEED + cfg.eval_episodes))
    out = {}
    for target in cfg.eval_rtg:
        res = rollout(ckpt, target, seeds, num_envs=min(32, len(seeds)), progress=False)
        returns = np.array([r.episode_return for r in res])
        out[f"{target:g}"] = {
            "mean_return": float(returns.mean()),
            "success_rate": float((returns > 0).mean()),
            "mean_length": float(np.mean([r.length for r in res])),
        }
    model.train(was_training)
    return out


# ------------------------------------------------------------------ checkpoints and resume


def save_run(
    out_dir: Path,
    model: HookedDecisionTransformer,
    optimizer: torch.optim.Optimizer,
    meta: dict,
    elapsed: float,
) -> None:
    """Checkpoint (weights + config.json), then the train state, then the model card.

    ``train_state.json`` is written last and records the sha256 of both weight files, so a save cut
    short leaves a state that resume recognises as inconsistent instead of silently mixing steps.
    """
    save_checkpoint(out_dir, model, meta)
    weights_sha = read_checkpoint_config(out_dir)["weights_sha256"]
    tensors, groups = _optimizer_tensors(optimizer)
    tensors.update(_rng_tensors())
    tmp = out_dir / f".{STATE_TENSORS_FILE}.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, out_dir / STATE_TENSORS_FILE)
    state = {
        "format_version": 1,
        "step": meta["step"],
        "elapsed": elapsed,
        "param_groups": groups,
        "weights_sha256": weights_sha,
        "train_state_sha256": _sha256(out_dir / STATE_TENSORS_FILE),
        "torch_version": torch.__version__,
        "dtinterp_version": dtinterp.__version__,
    }
    atomic_write_text(out_dir / STATE_JSON_FILE, json.dumps(state, indent=2, sort_keys=True) + "\n")
    write_model_card(out_dir, {"model": model.cfg.to_dict(), **meta})


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], list[dict]]:
    """AdamW state as named tensors (``exp_avg/<param>``, ...) and JSON-able group hyperparameters."""
    tensors: dict[str, Tensor] = {}
    groups = []
    for group in optimizer.param_groups:
        for name, p in zip(group["names"], group["params"]):
            for key, value in optimizer.state.get(p, {}).items():
                tensors[f"{key}/{name}"] = value.detach().to("cpu").contiguous()
        hyper = {k: v for k, v in group.items() if k != "params"}
        hyper["betas"] = list(hyper["betas"])
        groups.append(hyper)
    return tensors, groups


def _rng_tensors() -> dict[str, Tensor]:
    out = {"rng/torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng/cuda_{i}"] = s
    return out


def _load_run(
    out_dir: Path, cfg: TrainConfig, data: TrajectoryDataset, model_dict: dict
) -> tuple[HookedDecisionTransformer, dict]:
    """The saved model and meta of the run in ``out_dir``, after checking it is the same run."""
    if not (out_dir / STATE_JSON_FILE).is_file():
        raise CheckpointError(f"{out_dir}: nothing to resume (no {STATE_JSON_FILE})")
    ckpt = load_checkpoint(out_dir, device=cfg.device)
    model, meta = ckpt.model, ckpt.meta
    saved = meta.get("train")
    if not isinstance(saved, dict):
        raise CheckpointError(f"{out_dir / CONFIG_FILE}: no training config to resume from")
    try:
        saved_cfg = TrainConfig.from_dict(saved, source=str(out_dir / CONFIG_FILE))
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    for key, value in cfg.result_dict().items():
        if saved_cfg.result_dict()[key] != value:
            raise ConfigError(
                f"cannot resume {out_dir}: {key!r} differs from the saved run "
                f"(saved {saved_cfg.result_dict()[key]!r}, now {value!r})"
            )
    if meta.get("dataset") != data.fingerprint():
        raise ConfigError(f"cannot resume {out_dir}: the dataset differs from the one it was trained on")
    saved_model = read_checkpoint_config(out_dir)["model"]
    if saved_model != model_dict:
        raise ConfigError(f"cannot resume {out_dir}: the model architecture differs from the saved run")
    return model, meta


def _load_train_state(out_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, float]:
    """Restore AdamW moments and RNG states; returns (step, elapsed seconds)."""
    path = out_dir / STATE_JSON_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        step, elapsed, groups = int(state["step"]), float(state["elapsed"]), state["param_groups"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a valid train state ({exc})") from None
    config = read_checkpoint_config(out_dir)
    if config.get("step") != step or config.get("weights_sha256") != state.get("weights_sha256"):
        raise CheckpointError(
            f"{out_dir}: {STATE_JSON_FILE} (step {step}) does not belong with {WEIGHTS_FILE} "
            f"(step {config.get('step')}); the last save was interrupted"
        )
    tensor_path = out_dir / STATE_TENSORS_FILE
    if not tensor_path.is_file() or _sha256(tensor_path) != state.get("train_state_sha256"):
        raise CheckpointError(f"{tensor_path}: missing or does not match {STATE_JSON_FILE}")
    try:
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{tensor_path}: not a valid safetensors file ({exc})") from None

    own_groups = optimizer.param_groups
    if [g.get("names") for g in groups] != [g["names"] for g in own_groups]:
        raise CheckpointError(f"{path}: optimizer parameter groups do not match the model")
    per_param: dict[str, dict[str, Tensor]] = {}
    for key, t in tensors.items():
        kind, name = key.split("/", 1)
        if kind != "rng":
            per_param.setdefault(name, {})[kind] = t
    device = next(model.parameters()).device
    for saved, group in zip(groups, own_groups):
        group.update({k: (tuple(v) if k == "betas" else v) for k, v in saved.items() if k in _HYPER_KEYS})
        for name, p in zip(group["names"], group["params"]):
            if name in per_param:
                optimizer.state[p] = {k: _state_to(t, k, device) for k, t in per_param[name].items()}
    torch.set_rng_state(tensors["rng/torch_cpu"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng/cuda_")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    return step, elapsed


def _state_to(t: Tensor, kind: str, device: torch.device) -> Tensor:
    # AdamW keeps ``step`` on the CPU unless it runs fused/capturable (fused on CUDA here).
    return t if kind == "step" and device.type == "cpu" else t.to(device)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------ metrics sinks


class _MetricsLog:
    """Appends JSON lines; on resume first drops lines past the resumed step (they were never saved)."""

    def __init__(self, path: Path, keep_upto: int) -> None:
        self.path = path
        if path.exists():
            kept = [
                line for line in path.read_text(encoding="utf-8").splitlines() if _step_of(line) <= keep_upto
            ]
            atomic_write_text(path, "".join(line + "\n" for line in kept))

    def write(self, row: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def _step_of(line: str) -> float:
    """Step of a metrics line; a torn line (a crash mid-write) counts as past every step."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


class _Logger:
    """TensorBoard / W&B sink; a no-op for ``logger="none"``."""

    def __init__(self, kind: str, out_dir: Path, cfg: TrainConfig) -> None:
        self.kind, self.writer, self.run = kind, None, None
        if kind == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"))
        elif kind == "wandb":
            import wandb

            self.run = wandb.init(
                project="dtinterp", name=out_dir.name, dir=str(out_dir), mode="offline", config=cfg.to_dict()
            )

    def log(self, row: dict) -> None:
        flat = _flatten({k: v for k, v in row.items() if k != "step"})
        if self.writer is not None:
            for k, v in flat.items():
                self.writer.add_scalar(k, v, row["step"])
        if self.run is not None:
            self.run.log(flat, step=row["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.run is not None:
            self.run.finish()


def _flatten(d: dict, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_logger_available(kind: str) -> None:
    """ConfigError unless the package behind ``kind`` is installed (checked before anything is written)."""
    package = {"tensorboard": "tensorboard", "wandb": "wandb"}.get(kind)
    if package and importlib.util.find_spec(package) is None:
        raise ConfigError(
            f"logger {kind!r} needs the {package!r} package, which is not installed (pip install {package})"
        )


def _open_logger(cfg: TrainConfig, out_dir: Path) -> _Logger:
    check_logger_available(cfg.logger)
    return _Logger(cfg.logger, out_dir, cfg)
