"""Benchmark: training throughput of our decision transformer against HuggingFace's.

Both models get the same width, depth, heads, MLP width and context K, and train on the same batches of
windows (cut once by :class:`~dtinterp.data.windows.WindowSampler` from a synthetic 7x7-view dataset):

- ours: :class:`~dtinterp.model.HookedDecisionTransformer` stepped by the trainer's own
  :func:`~dtinterp.train.trainer.train_step` (forward, masked cross-entropy, backward, grad clip, AdamW);
- reference: ``transformers.DecisionTransformerModel`` with ``state_dim = W*H*20`` (the flattened
  one-hot grid, float), ``act_dim = 7`` (one-hot actions), ``action_tanh=False`` so its action head gives
  logits, no dropout, the same masked cross-entropy, grad clip and AdamW.

A timed run is ``--steps`` full training steps; runs alternate between the two models and the median
samples/s (windows per second) of ``--runs`` runs is reported, with the ratio ours / HF (target >= 1.0).
Batches are built before timing (the one-hot expansion the HF model needs is not charged to it). The
trainer's end-to-end rate, which also samples every batch from the dataset, is printed for reference.

Run by hand: ``python benchmarks/train_throughput.py [--device cuda]`` (prints, asserts nothing).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from transformers import DecisionTransformerConfig, DecisionTransformerModel

from dtinterp.data.windows import WindowSampler
from dtinterp.model import DTConfig, DTInputs, HookedDecisionTransformer
from dtinterp.model.embeddings import one_hot_torch
from dtinterp.train.trainer import loss_and_correct, train_step
from envs.encoding import N_CHANNELS

TARGET_RATIO = 1.0
N_ACTIONS = 7


class SyntheticData:
    """Random valid 7x7 egocentric observations in episodes of 20-60 steps, sparse final rewards."""

    def __init__(self, n_episodes: int, view: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        lengths = rng.integers(20, 61, size=n_episodes)
        n = int(lengths.sum())
        self.episode_starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.obs = np.stack(
            [
                rng.integers(0, 11, (n, view, view)),
                rng.integers(0, 6, (n, view, view)),
                rng.integers(0, 3, (n, view, view)),
            ],
            -1,
        ).astype(np.uint8)
        self.directions = rng.integers(0, 4, n).astype(np.uint8)
        self.actions = rng.integers(0, N_ACTIONS, n).astype(np.uint8)
        self.rewards = np.zeros(n, np.float32)
        self.rewards[self.episode_starts[1:] - 1] = rng.uniform(0, 1, n_episodes)


def hf_inputs(b: DTInputs) -> dict[str, torch.Tensor]:
    """The same windows in HF's input format (one-hot states and actions; pad rows zero)."""
    B, K = b.rtg.shape
    mask = b.pad_mask
    states = one_hot_torch(b.obs).reshape(B, K, -1) * mask[..., None]
    actions = F.one_hot(b.actions.clamp(max=N_ACTIONS - 1), N_ACTIONS).float() * mask[..., None]
    return {
        "states": states,
        "actions": actions,
        "returns_to_go": b.rtg[..., None],
        "timesteps": b.timesteps,
        "attention_mask": mask.long(),
        "targets": b.actions,
        "pad_mask": mask,
    }


def hf_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: dict, lr: float, grad_clip: float
) -> None:
    """HF's training step, mirroring :func:`train_step` (same loss, clip and optimizer)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    out = model(
        states=x["states"],
        actions=x["actions"],
        returns_to_go=x["returns_to_go"],
        timesteps=x["timesteps"],
        attention_mask=x["attention_mask"],
        return_dict=True,
    )
    loss, _, _ = loss_and_correct(out.action_preds, x["targets"], x["pad_mask"])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(step_fn, batches: list, device: torch.device, steps: int) -> float:
    """Samples/s of ``steps`` training steps cycling through ``batches``."""
    sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        step_fn(batches[i % len(batches)])
    sync(device)
    return steps * batch_size_of(batches[0]) / (time.perf_counter() - t0)


def batch_size_of(b) -> int:
    return b.rtg.shape[0] if isinstance(b, DTInputs) else b["states"].shape[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--context-len", type=int, default=8)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--d-mlp", type=int, default=512)
    p.add_argument("--view", type=int, default=7)
    p.add_argument("--max-timestep", type=int, default=256)
    p.add_argument("--steps", type=int, default=50, help="training steps per timed run")
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)

    data = SyntheticData(n_episodes=400, view=args.view)
    sampler = WindowSampler(data, args.context_len, 1.0, N_ACTIONS, args.max_timestep, p_episode_end=0.1)
    rng = np.random.default_rng(0)
    ours_batches = [sampler.sample(args.batch_size, rng).to(device) for _ in range(8)]
    hf_batches = [hf_inputs(b) for b in ours_batches]

    cfg = DTConfig(
        obs_shape=(args.view, args.view),
        n_actions=N_ACTIONS,
        max_timestep=args.max_timestep,
        context_len=args.context_len,
        n_layers=args.layers,
        n_heads=args.heads,
        d_model=args.d_model,
        d_mlp=args.d_mlp,
        device=args.device,
    )
    ours = HookedDecisionTransformer(cfg).train()
    hf_cfg = DecisionTransformerConfig(
        state_dim=args.view * args.view * N_CHANNELS,
        act_dim=N_ACTIONS,
        hidden_size=args.d_model,
        max_ep_len=args.max_timestep,
        action_tanh=False,
        n_layer=args.layers,
        n_head=args.heads,
        n_inner=args.d_mlp,
        activation_function="relu",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=None,  # GPT-2's token ids mean nothing here (and trigger a config warning)
        eos_token_id=None,
    )
    hf = DecisionTransformerModel(hf_cfg).to(device).train()
    fused = device.type == "cuda"
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-4, fused=fused)
    opt_hf = torch.optim.AdamW(hf.parameters(), lr=1e-4, fused=fused)

    def step_ours(b: DTInputs) -> None:
        train_step(ours, opt_ours, b, 1e-4, 1.0)

    def step_hf(x: dict) -> None:
        hf_step(hf, opt_hf, x, 1e-4, 1.0)

    for _ in range(3):  # warm-up: allocator, kernels, autotuning
        timed(step_ours, ours_batches, device, 3)
        timed(step_hf, hf_batches, device, 3)
    rates_ours, rates_hf = [], []
    for _ in range(args.runs):
        rates_ours.append(timed(step_ours, ours_batches, device, args.steps))
        rates_hf.append(timed(step_hf, hf_batches, device, args.steps))

    # End to end, as the trainer runs: sample windows from the dataset every step, move them, step.
    def sample_and_step(i: int) -> None:
        train_step(
            ours,
            opt_ours,
            sampler.sample(args.batch_size, np.random.default_rng([0, i])).to(device),
            1e-4,
            1.0,
        )

    rates_e2e = []
    for _ in range(args.runs):
        sync(device)
        t0 = time.perf_counter()
        for i in range(args.steps):
            sample_and_step(i)
        sync(device)
        rates_e2e.append(args.steps * args.batch_size / (time.perf_counter() - t0))

    med_ours, med_hf = statistics.median(rates_ours), statistics.median(rates_hf)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_hf = sum(p.numel() for p in hf.parameters())
    print(
        f"device {device} (threads {torch.get_num_threads()})  batch {args.batch_size}  K {args.context_len}  "
        f"d_model {args.d_model}  layers {args.layers}  heads {args.heads}  d_mlp {args.d_mlp}  "
        f"view {args.view}x{args.view}"
    )
    print(f"  ours (HookedDecisionTransformer)   {med_ours:10,.0f} samples/s   {n_ours:,} params")
    print(f"  HF DecisionTransformerModel        {med_hf:10,.0f} samples/s   {n_hf:,} params")
    print(f"  ratio ours / HF                    {med_ours / med_hf:10.2f}   (target >= {TARGET_RATIO})")
    print(f"  ours end to end (with sampling)    {statistics.median(rates_e2e):10,.0f} samples/s")
    print(f"  runs: ours {[round(r) for r in rates_ours]}  HF {[round(r) for r in rates_hf]}")


if __name__ == "__main__":
    main()
