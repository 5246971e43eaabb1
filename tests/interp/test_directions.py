"""Saved directions: exact round trips through JSON + safetensors, one-line errors for bad files/inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import dtinterp
from dtinterp.interp.attribution import centred_unembed
from dtinterp.interp.directions import (
    DirectionLibrary,
    DirectionsError,
    SavedDirection,
    default_directions_dir,
    from_embedding_row,
    from_mean_diff,
    from_neuron,
    from_pca,
    from_unembed,
    read_export,
)
from dtinterp.interp.embedding_geometry import embedding_rows, pca
from tests.plugins.conftest import _random_model


@pytest.fixture(scope="module")
def model():
    return _random_model()


@pytest.fixture(scope="module")
def made(model) -> list[SavedDirection]:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(10, 3, 32, generator=g), torch.randn(7, 32, generator=g)
    return [
        from_embedding_row(model, "state", "key@(4,2)", model_name="tiny"),
        from_embedding_row(model, "time", 3),
        from_pca(pca(embedding_rows(model, "action")), 0),
        from_neuron(model, 1, 5, "in"),
        from_neuron(model, 0, 7, "out", description="an output"),
        from_mean_diff(a, b, "door-vs-none", hook="blocks.0.hook_resid_post"),
        from_unembed(model, "forward", minus="left"),
    ]


def _same(x: SavedDirection, y: SavedDirection) -> bool:
    fields = ("name", "kind", "model", "description", "metadata", "created")
    return all(getattr(x, f) == getattr(y, f) for f in fields) and torch.equal(x.vector, y.vector)


def test_save_load_round_trips_exactly(tmp_path, model, made):
    lib = DirectionLibrary(tmp_path / "lib")
    for d in made:
        lib.save(d)
    assert lib.names() == sorted(d.name for d in made)
    fresh = DirectionLibrary(tmp_path / "lib")
    for d in made:
        assert _same(fresh.load(d.name, model), d)
    assert all(_same(x, y) for x, y in zip(fresh.list(), sorted(made, key=lambda d: d.name)))
    out = fresh.export(tmp_path / "out" / "some.safetensors", ["L1N5-in", "door-vs-none"])
    back = read_export(out)
    assert [d.name for d in back] == ["L1N5-in", "door-vs-none"]
    assert all(_same(x, fresh.load(x.name)) for x in back)
    fresh.delete("L1N5-in")
    assert "L1N5-in" not in fresh and len(fresh.names()) == len(made) - 1
    with pytest.raises(DirectionsError, match="already exists"):
        fresh.save(made[0])
    fresh.save(SavedDirection(made[0].name, torch.ones(32), "custom"), overwrite=True)
    assert torch.equal(fresh.load(made[0].name).vector, torch.ones(32))


def test_constructors_take_the_right_vectors(model, made):
    by = {d.name: d for d in made}
    torch.testing.assert_close(by["L1N5-in"].vector, model.blocks[1].mlp.W_in[:, 5].detach())
    torch.testing.assert_close(by["L0N7-out"].vector, model.blocks[0].mlp.W_out[7].detach())
    assert (
        by["L0N7-out"].vector.untyped_storage().data_ptr()
        != model.blocks[0].mlp.W_out.untyped_storage().data_ptr()
    )
    W = centred_unembed(model).detach()
    torch.testing.assert_close(by["unembed:forward-left"].vector, W[:, 2] - W[:, 0])
    torch.testing.assert_close(by["time:t=3"].vector, model.time_embed.weight[3].detach())
    assert by["pc0"].vector.norm() == pytest.approx(1.0, abs=1e-6)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(10, 3, 32, generator=g), torch.randn(7, 32, generator=g)
    torch.testing.assert_close(by["door-vs-none"].vector, a.reshape(-1, 32).mean(0) - b.mean(0))
    assert by["door-vs-none"].metadata == {"hook": "blocks.0.hook_resid_post", "n_a": 30, "n_b": 7}


def test_bad_files_and_inputs_are_one_line_errors(tmp_path, model, made):
    lib = DirectionLibrary(tmp_path)
    lib.save(made[0])

    def one_line(match: str, fn, *args):
        with pytest.raises(DirectionsError, match=match) as err:
            fn(*args)
        assert "\n" not in str(err.value)

    one_line("invalid direction name", SavedDirection, "bad name!", torch.ones(3), "custom")
    one_line("invalid direction name", SavedDirection, "", torch.ones(3), "custom")
    one_line("kind must be one of", SavedDirection, "x", torch.ones(3), "weird")
    one_line("has d_model 5", SavedDirection("five", torch.ones(5), "custom").check_fits, model)
    one_line("no direction named", lib.load, "nope")
    tensors = load_file(lib.tensors_path)  # a vector that no longer matches its recorded digest
    save_file({k: v + 1 for k, v in tensors.items()}, lib.tensors_path)
    one_line(str(lib.tensors_path), lib.load, made[0].name)
    lib.tensors_path.unlink()
    one_line(f"{lib.tensors_path} is missing", lib.names)
    lib.index_path.write_text("{not json")
    one_line(str(lib.index_path), lib.names)
    lib.index_path.write_text(json.dumps({"format_version": 1, "directions": {"x": {"kind": "custom"}}}))
    one_line("malformed entry", lib.names)
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    one_line("bad.safetensors", read_export, tmp_path / "bad.safetensors")


def test_default_library_lives_in_the_user_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("DTINTERP_DIRECTIONS_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_directions_dir() == tmp_path / "dtinterp" / "directions"
    monkeypatch.delenv("XDG_DATA_HOME")
    default = default_directions_dir()
    assert default == Path.home() / ".local" / "share" / "dtinterp" / "directions"
    assert Path(dtinterp.__file__).parent not in default.parents
