"""Checkpoint round trip and every malformed-checkpoint case."""

from __future__ import annotations

import json

import pytest
import torch

from dtinterp.errors import CheckpointError
from dtinterp.model import DTConfig, HookedDecisionTransformer
from dtinterp.model.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture
def ckpt(tmp_path):
    model = HookedDecisionTransformer(
        DTConfig(context_len=3, n_layers=1, n_heads=2, d_model=16, d_mlp=32, seed=0)
    )
    meta = {"env_spec": {"env_id": "MiniGrid-Empty-5x5-v0"}, "rtg_scale": 1.0, "step": 7}
    save_checkpoint(tmp_path / "run", model, meta)
    return tmp_path / "run", model, meta


def test_round_trip(ckpt):
    path, model, meta = ckpt
    ck = load_checkpoint(path)
    loaded, loaded_meta = ck.model, ck.meta
    assert loaded_meta == meta and ck.name == "run" and ck.rtg_scale == 1.0
    assert ck.env_spec.env_id == "MiniGrid-Empty-5x5-v0" and ck.path == path and len(ck.weights_sha256) == 64
    assert ck.action_names == ("left", "right", "forward", "pickup", "drop", "toggle", "done")
    assert loaded.cfg.to_dict() == model.cfg.to_dict()
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    assert not loaded.training
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    assert b"pickle" not in (path / "model.safetensors").read_bytes()[:200]


def _edit_config(path, fn):
    cfg = json.loads((path / "config.json").read_text())
    fn(cfg)
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "breaker, message",
    [
        (lambda p: (p / "config.json").unlink(), "missing config.json"),
        (lambda p: (p / "model.safetensors").unlink(), "missing model.safetensors"),
        (lambda p: (p / "config.json").write_text("{not json"), "not valid JSON"),
        (lambda p: _edit_config(p, lambda c: c.update(format_version=99)), "format_version"),
        (lambda p: _edit_config(p, lambda c: c["model"].update(n_flux=3)), "unknown model config keys"),
        (lambda p: _edit_config(p, lambda c: c["model"].update(version=5)), "version"),
        (
            lambda p: _edit_config(p, lambda c: c["model"].update(normalization_type="BN")),
            "normalization_type",
        ),
        (lambda p: _edit_config(p, lambda c: c["model"].update(d_mlp=64)), "sha256|shape mismatch"),
        (lambda p: (p / "model.safetensors").write_bytes(b"\x00" * 40), "sha256"),
    ],
)
def test_bad_checkpoints_raise_one_line(ckpt, breaker, message):
    path, _, _ = ckpt
    breaker(path)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


def test_shape_mismatch_and_corrupt_weights_without_hash(ckpt):
    path, _, _ = ckpt
    _edit_config(path, lambda c: (c.pop("weights_sha256"), c["model"].update(d_mlp=64)))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_checkpoint(path)
    _edit_config(path, lambda c: c["model"].update(d_mlp=32))
    (path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        load_checkpoint(path)


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no such directory"):
        load_checkpoint(tmp_path / "nope")
