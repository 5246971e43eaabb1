"""The training loop: schedule, parameter groups, masked loss, overfitting, bit-exact resume, configs."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch

from dtinterp.data.dataset import TrajectoryDataset, make_metadata
from dtinterp.errors import CheckpointError, ConfigError
from dtinterp.model import DTConfig, HookedDecisionTransformer
from dtinterp.model.checkpoint import load_checkpoint, read_checkpoint_config
from dtinterp.train.commands import _StopOnInterrupt
from dtinterp.train.config import TrainConfig, load_train_config
from dtinterp.train.model_card import render_model_card
from dtinterp.train.trainer import (
    METRICS_FILE,
    STATE_JSON_FILE,
    check_logger_available,
    loss_and_correct,
    lr_at,
    param_groups,
    train,
)
from envs.spec import EnvSpec

TINY_MODEL = {"n_layers": 1, "n_heads": 2, "d_model": 64, "d_mlp": 128}


def synthetic_dataset(lengths: list[int], seed: int = 0) -> TrajectoryDataset:
    """Random (valid) Empty-5x5 observations and random actions: learnable only by memorizing."""
    rng = np.random.default_rng(seed)
    n = sum(lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    obs = np.zeros((n, 7, 7, 3), np.uint8)
    obs[..., 0] = rng.integers(1, 3, size=(n, 7, 7))  # empty / wall
    obs[..., 1] = rng.integers(0, 6, size=(n, 7, 7))
    terminated = np.zeros(n, bool)
    terminated[starts[1:] - 1] = True
    rewards = np.zeros(n, np.float32)
    rewards[starts[1:] - 1] = rng.uniform(0.2, 1.0, size=len(lengths))
    policy = {"name": "random", "params": {}, "modes": ["random"]}
    ds = TrajectoryDataset(
        obs=obs,
        directions=rng.integers(0, 4, n).astype(np.uint8),
        actions=rng.integers(0, 7, n).astype(np.uint8),
        rewards=rewards,
        terminated=terminated,
        truncated=np.zeros(n, bool),
        episode_starts=starts,
        episode_modes=np.zeros(len(lengths), np.uint8),
        metadata=make_metadata(EnvSpec("MiniGrid-Empty-5x5-v0"), policy, seed=seed, episodes=len(lengths)),
    )
    ds.validate()
    return ds


@pytest.fixture(scope="module")
def data() -> TrajectoryDataset:
    return synthetic_dataset([12, 9, 15])


def tiny_config(**changes) -> TrainConfig:
    base = dict(
        model=TINY_MODEL,
        context_len=4,
        batch_size=32,
        steps=40,
        lr=3e-3,
        warmup_steps=5,
        weight_decay=0.01,
        log_every=10,
        p_episode_end=0.2,
    )
    return TrainConfig(**{**base, **changes})


def weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------ step pieces


def test_lr_schedule_warmup_then_cosine_to_min():
    cfg = TrainConfig(lr=1e-3, warmup_steps=10, steps=110, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg) for s in range(cfg.steps)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))  # rising warmup
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # then non-increasing
    assert lrs[60] == pytest.approx(1e-4 + 0.5 * 9e-4)  # cosine midpoint
    assert lr_at(cfg.steps, cfg) == pytest.approx(1e-4)  # ends at min_lr_ratio * lr


@pytest.mark.parametrize("encoder", ["grid", "cnn"])
def test_param_groups_decay_only_linear_maps(encoder):
    model = HookedDecisionTransformer(DTConfig(n_layers=2, d_model=32, d_mlp=64, state_encoder=encoder))
    decay, no_decay = param_groups(model, 0.1)
    ids = [id(p) for p in decay["params"] + no_decay["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # each parameter exactly once
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    leafs = {n.rsplit(".", 1)[-1] for n in decay["names"]}
    expected = {"W_Q", "W_K", "W_V", "W_O", "W_in", "W_out", "W_U"} | (
        {"weight"} if encoder == "cnn" else set()
    )
    assert leafs == expected
    assert all(p.dim() >= 2 for p in decay["params"])
    for name in ["W_rtg", "action_embed.weight", "time_embed.weight", "state_embed.W_dir", "blocks.0.ln1.w"]:
        assert name in no_decay["names"]
    if encoder == "grid":
        assert "state_embed.W_state" in no_decay["names"]
    assert any(n.endswith("b_Q") for n in no_decay["names"])  # 2-D biases are still biases


def test_loss_ignores_padding():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 7)
    actions = torch.randint(0, 7, (3, 4))
    mask = torch.tensor([[False, False, True, True], [True] * 4, [False, False, False, True]])
    actions = actions.masked_fill(~mask, 7)  # the pad action
    loss, correct, n = loss_and_correct(logits, actions, mask)
    expected = torch.nn.functional.cross_entropy(logits[mask], actions[mask])
    assert torch.allclose(loss, expected) and n.item() == 7
    assert correct.item() == (logits[mask].argmax(-1) == actions[mask]).sum().item()
    noisy = logits.clone()
    noisy[~mask] += 100 * torch.randn_like(noisy[~mask])
    assert torch.equal(loss_and_correct(noisy, actions, mask)[0], loss)


# ------------------------------------------------------------------ training runs


def test_tiny_model_overfits_tiny_dataset(tmp_path, data):
    cfg = tiny_config(steps=200, batch_size=64, weight_decay=0.0, log_every=50)
    result = train(cfg, data, tmp_path / "run", progress=False)
    assert result.step == 200 and not result.stopped_early
    assert result.loss < 0.05 and result.acc > 0.99
    run = tmp_path / "run"
    for name in ["model.safetensors", "config.json", "model_card.md", METRICS_FILE, STATE_JSON_FILE]:
        assert (run / name).is_file(), name
    rows = [json.loads(line) for line in (run / METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in rows] == [50, 100, 150, 200]
    assert set(rows[0]) == {"step", "loss", "acc", "lr", "samples_per_s", "elapsed"}
    assert rows[-1]["loss"] < rows[0]["loss"]
    ck = load_checkpoint(run)
    model, meta = ck.model, ck.meta
    assert meta["step"] == 200 and meta["rtg_scale"] == 1.0 and meta["dataset"] == data.fingerprint()
    assert meta["train"] == cfg.to_dict() and meta["env_spec"]["env_id"] == "MiniGrid-Empty-5x5-v0"
    assert model.cfg.max_timestep == 100  # Empty-5x5's step limit: 4 * 5 * 5
    assert model.cfg.context_len == 4 and model.cfg.d_model == 64
    card = (run / "model_card.md").read_text()
    assert "MiniGrid-Empty-5x5-v0" in card and data.fingerprint()["sha256"] in card
    assert f"{result.n_params:,} parameters" in card and "final training loss" in card


def test_resume_ends_at_exactly_the_uninterrupted_weights(tmp_path, data):
    cfg = tiny_config(steps=30, checkpoint_every=0)
    full = train(cfg, data, tmp_path / "full", progress=False)
    part = train(cfg, data, tmp_path / "split", progress=False, should_stop=lambda step: step >= 13)
    assert part.stopped_early and part.step == 13
    assert read_checkpoint_config(tmp_path / "split")["step"] == 13
    rest = train(cfg, data, tmp_path / "split", resume=True, progress=False)
    assert rest.step == 30 and full.step == 30
    a = load_checkpoint(tmp_path / "full").model
    b = load_checkpoint(tmp_path / "split").model
    assert weights_equal(a, b)
    steps = [
        json.loads(line)["step"] for line in (tmp_path / "split" / METRICS_FILE).read_text().splitlines()
    ]
    assert steps == [10, 13, 20, 30]  # one line per logged step, none repeated across the resume
    # And a different seed really gives different weights (the comparison above can fail).
    other = train(cfg.replace(seed=1), data, tmp_path / "seed1", progress=False)
    assert other.step == 30
    assert not weights_equal(a, load_checkpoint(tmp_path / "seed1").model)


def test_resume_checks_it_is_the_same_run(tmp_path, data):
    cfg = tiny_config(steps=6)
    train(cfg, data, tmp_path / "run", progress=False, should_stop=lambda step: step >= 3)
    with pytest.raises(ConfigError, match="'lr' differs"):
        train(cfg.replace(lr=1e-3), data, tmp_path / "run", resume=True, progress=False)
    with pytest.raises(ConfigError, match="dataset differs"):
        train(cfg, synthetic_dataset([12, 9, 15], seed=1), tmp_path / "run", resume=True, progress=False)
    with pytest.raises(ConfigError, match="already holds a training run"):
        train(cfg, data, tmp_path / "run", progress=False)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(cfg, data, tmp_path / "empty", resume=True, progress=False)
    # A save cut short between the weights and the train state is detected, not silently mixed.
    state_path = tmp_path / "run" / STATE_JSON_FILE
    state = json.loads(state_path.read_text())
    state_path.write_text(json.dumps({**state, "step": 2}))
    with pytest.raises(CheckpointError, match="does not belong with"):
        train(cfg, data, tmp_path / "run", resume=True, progress=False)


def test_wandb_logger_writes_an_offline_run(tmp_path, data):
    pytest.importorskip("wandb")
    cfg = tiny_config(steps=2, log_every=1, logger="wandb")
    train(cfg, data, tmp_path / "run", progress=False)
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))


def test_missing_logger_package_is_a_config_error():
    import importlib.util

    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed")
    with pytest.raises(ConfigError, match="'tensorboard' package"):
        check_logger_available("tensorboard")


def test_first_interrupt_requests_a_stop_second_one_raises():
    with _StopOnInterrupt() as stop:
        assert not stop(1)
        os.kill(os.getpid(), signal.SIGINT)
        assert stop(2)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# ------------------------------------------------------------------ config files


def test_config_file_roundtrip(tmp_path):
    cfg = tiny_config(betas=(0.8, 0.99), eval_rtg=[0.5, 1.0])
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert load_train_config(path) == cfg
    path.write_text(json.dumps({"steps": 7}))  # partial files keep the defaults
    assert load_train_config(path) == TrainConfig(steps=7)


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        ({"stepz": 10}, "unknown key 'stepz'"),
        ({"lr": -1.0}, "'lr' must be a number > 0"),
        ({"steps": 2.5}, "'steps' must be an integer"),
        ({"steps": True}, "'steps' must be an integer"),
        ({"betas": [0.9]}, "'betas' must be two numbers"),
        ({"logger": "mlflow"}, "'logger' must be one of"),
        ({"device": "gpu0"}, "'device' must be a torch device"),
        ({"model": {"n_layer": 2}}, "unknown key 'model.n_layer'"),
        ({"model": {"d_model": 30, "n_heads": 4}}, "not divisible"),
        ({"model": {"act_fn": "tanh"}}, "'model.act_fn' has a bad value"),
        ("[1, 2]", "expected a JSON object"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_config_file_is_one_line_naming_file_and_key(tmp_path, content, expect):
    path = tmp_path / "bad.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ConfigError) as info:
        load_train_config(path)
    msg = str(info.value)
    assert expect in msg and str(path) in msg and "\n" not in msg


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_train_config(tmp_path / "nope.json")


def test_model_card_shows_results_when_present():
    config = {
        "model": DTConfig().to_dict(),
        "env_spec": EnvSpec("MiniGrid-Empty-5x5-v0").to_dict(),
        "train": TrainConfig().to_dict(),
        "run": {"n_params": 1234, "wall_time_s": 75.0, "device": "cpu", "final_loss": 0.5, "final_acc": 0.8},
        "step": 10,
    }
    card = render_model_card(config)
    assert "1,234 parameters" in card and "1m 15s" in card and "Not evaluated yet" in card
    results = [{"target_rtg": 0.9, "mean_return": 0.75, "success_rate": 0.875}]
    card = render_model_card({**config, "results": results})
    assert "| target_rtg | mean_return | success_rate |" in card and "| 0.9 | 0.75 | 0.875 |" in card


def test_periodic_evaluation_is_logged_and_leaves_training_unchanged(tmp_path, data):
    cfg = tiny_config(steps=4, log_every=2)
    plain = train(cfg, data, tmp_path / "plain", progress=False)
    evald = train(
        cfg.replace(eval_every=2, eval_episodes=2, eval_rtg=[1.0, 0.5]),
        data,
        tmp_path / "eval",
        progress=False,
    )
    assert plain.step == evald.step == 4
    assert weights_equal(load_checkpoint(tmp_path / "plain").model, load_checkpoint(tmp_path / "eval").model)
    rows = [json.loads(line) for line in (tmp_path / "eval" / METRICS_FILE).read_text().splitlines()]
    evals = [r for r in rows if "eval" in r]
    assert [r["step"] for r in evals] == [2, 4]
    for r in evals:
        assert set(r["eval"]) == {"1", "0.5"}
        for res in r["eval"].values():
            assert 0.0 <= res["success_rate"] <= 1.0 and 0.0 <= res["mean_return"] <= 1.0
            assert 1 <= res["mean_length"] <= 100  # Empty-5x5 stops episodes at 100 steps
