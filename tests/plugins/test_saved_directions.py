"""Saved directions: save -> load round-trips exactly; every analysis that explains a direction takes one."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from dtinterp.data.collect import collect
from dtinterp.data.dataset import save_dataset
from dtinterp.directions_cli import add_arguments, cmd_directions
from dtinterp.interp.directions import DirectionLibrary, DirectionsError, from_unembed
from dtinterp.model.checkpoint import load_checkpoint
from dtinterp.model.shipped import resolve_model
from dtinterp.plugins.api import AnalysisContext, ParameterError
from dtinterp.plugins.directions_param import parse_direction
from tests.plugins.helpers import assert_labelled

PLUGIN = "saved-directions"


@pytest.fixture
def library(tmp_path, monkeypatch) -> DirectionLibrary:
    monkeypatch.setenv("DTINTERP_DIRECTIONS_DIR", str(tmp_path / "directions"))
    return DirectionLibrary()


def cli(*argv: str) -> int:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return cmd_directions(p.parse_args(list(argv)))


def test_save_load_round_trips_exactly_and_reads_as_the_model_does(
    registry, library, tiny_model, tiny_meta, many_windows
):
    saved = from_unembed(tiny_model, "forward", "fwd-left", minus="left")  # centred W_U[:, 2] - W_U[:, 0]
    library.save(saved)
    loaded = DirectionLibrary().load("fwd-left", tiny_model)
    assert torch.equal(loaded.vector, saved.vector) and loaded.kind == saved.kind
    assert loaded.metadata == saved.metadata and loaded.created == saved.created
    # The listing analysis reads it back: its push on each logit is v . centred W_U.
    d = registry.run(PLUGIN, AnalysisContext(tiny_model, None, tiny_meta), {"name": "fwd-left"}).data
    W_U = tiny_model.W_U.detach()
    i = d["names"].index("fwd-left")
    np.testing.assert_allclose(d["push"][i], (saved.vector @ (W_U - W_U.mean(0))).numpy(), atol=1e-6)
    # As a direction to explain, it reads the logit difference without the bias b_U[a] - b_U[b].
    ctx = AnalysisContext(tiny_model, many_windows, tiny_meta)
    dla = registry.run("dla", ctx, {"direction": "saved:fwd-left", "window": -1}).data
    logits = ctx.logits[:, -1].double()
    b_U = tiny_model.b_U.detach().double()
    expected = (logits[:, 2] - logits[:, 0]) - (b_U[2] - b_U[0])
    np.testing.assert_allclose(dla["value"], expected.numpy(), atol=1e-4)
    assert dla["decomposition_error"] <= 1e-4


def test_direction_parameter_is_parsed_once_with_one_line_errors(library, tiny_model):
    three = ("left", "right", "forward")  # a Dynamic-Obstacles model has no toggle
    assert parse_direction("top-vs-runner-up", three, "x").spec is None
    assert parse_direction("forward", three, "x").spec == "forward"
    assert parse_direction("forward-left", three, "x").spec == ("forward", "left")
    for text, match in [
        ("toggle", "unknown action 'toggle'.*left, right, forward"),
        ("toggle-left", "unknown action 'toggle'"),
        ("saved:missing", "no direction named 'missing'"),
        ("", "is not top-vs-runner-up"),
    ]:
        with pytest.raises(ParameterError, match=match) as err:
            parse_direction(text, three, "x")
        assert "\n" not in str(err.value)
    library.save(from_unembed(tiny_model, "forward", "wide"))
    with pytest.raises(ParameterError, match="d_model"):
        parse_direction("saved:wide", three, "x", model=_wider_model())


def _wider_model():
    from tests.plugins.conftest import _random_model

    return _random_model(d_model=48)


def test_cli_saves_lists_exports_and_deletes(library, tmp_path, capsys, registry):
    ckpt = load_checkpoint(resolve_model("memory-s7"))
    for name, source in [
        ("fwd", ["--unembed", "forward"]),
        ("ball", ["--embedding", "state:ball@(3,4)"]),
        ("pc1", ["--pca", "time:1"]),
        ("n7", ["--neuron", "1:7:out"]),
    ]:
        assert cli("save", "memory-s7", name, *source) == 0
    assert torch.equal(library.load("n7").vector, ckpt.model.blocks[1].mlp.W_out[7].detach())
    sets = []
    for i, seed in enumerate((0, 1)):
        path = tmp_path / f"set{i}.npz"
        save_dataset(collect(ckpt.env_spec, 1, "expert", seed=seed, progress=False), path)
        sets.append(str(path))
    hook = "blocks.1.hook_resid_post"
    assert cli("save", "memory-s7", "diff", "--mean-diff", hook, "--set-a", sets[0], "--set-b", sets[1]) == 0
    assert library.load("diff").metadata["hook"] == hook
    with pytest.raises(DirectionsError, match="already exists"):
        cli("save", "memory-s7", "fwd", "--unembed", "left")
    with pytest.raises(DirectionsError, match="unknown action"):
        cli("save", "memory-s7", "bad", "--unembed", "jump")
    assert cli("list") == 0
    listing = capsys.readouterr().out
    assert all(n in listing for n in ("fwd", "ball", "pc1", "n7", "diff"))
    assert cli("export", str(tmp_path / "out.safetensors"), "fwd", "ball") == 0
    assert cli("delete", "ball") == 0 and library.names() == ["diff", "fwd", "n7", "pc1"]
    result = registry.run(PLUGIN, AnalysisContext(ckpt, None), {"name": "diff"})
    json.dumps(result.to_json())
    figs = registry.figures(PLUGIN, result)
    assert_labelled(figs)
    assert all((f.layout.height or 450) <= 900 for f in figs)
    assert "4 saved direction(s)" in result.summary
