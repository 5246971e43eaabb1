"""``make models`` recipes: every shipped agent was built from the recipe beside it, and a bad recipe is
a one-line error naming the file (exit 2, nothing written)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dtinterp.errors import ConfigError
from dtinterp.model.shipped import list_models
from dtinterp.train.model_card import render_model_card
from dtinterp.train.reproduce import RECIPE_FILE, find_recipes, load_recipe, record_reproduction

SHIPPED = list_models()


def run_reproduce(*args: str) -> subprocess.CompletedProcess:
    """``python -m dtinterp.train.reproduce ARGS`` in a fresh process, no stdin, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "dtinterp.train.reproduce", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


@pytest.mark.parametrize("shipped", SHIPPED, ids=lambda m: m.name)
def test_shipped_agent_matches_its_recipe(shipped):
    """The checkpoint's recorded data, training and headline settings are the recipe's own."""
    recipe = load_recipe(shipped.path / RECIPE_FILE)
    config = shipped.config
    collect, data_meta = recipe["collect"], config["dataset_metadata"]
    assert config["dataset"]["env_id"] == collect["env"]
    assert config["dataset"]["n_episodes"] == collect["episodes"]
    assert data_meta["seed"] == collect["seed"] and data_meta["policy"]["name"] == collect["policy"]
    for key, value in collect.get("policy_params", {}).items():
        assert data_meta["policy"]["params"][key] == value, f"{shipped.name}: policy param {key!r}"
    train = recipe["train"]
    assert config["step"] == train["steps"]
    for key, value in train.items():
        if key != "model":
            assert config["train"][key] == value, f"{shipped.name}: train setting {key!r}"
    for key, value in train["model"].items():
        assert config["model"][key] == value, f"{shipped.name}: model setting {key!r}"
    assert config["results"]["headline"]["target_rtg"] == recipe["headline_rtg"]
    assert config.get("description", "") == recipe.get("description", "")
    assert config.get("data_note", "") == recipe.get("data_note", "")


def write_recipe(root: Path, name: str, recipe: dict) -> Path:
    path = root / name / RECIPE_FILE
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(recipe))
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda r: r.update(colect=r.pop("collect")),
            r"unknown keys \['colect'\] / missing keys \['collect'\]",
        ),
        (lambda r: r.update(data_note=["not", "text"]), "'data_note' must be a string"),
    ],
)
def test_bad_recipe_is_a_one_line_error_naming_the_file(tmp_path, edit, message):
    recipe = json.loads((SHIPPED[0].path / RECIPE_FILE).read_text())
    edit(recipe)
    path = write_recipe(tmp_path, "broken", recipe)
    with pytest.raises(ConfigError, match=message) as info:
        find_recipes(tmp_path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    out = run_reproduce("--models-dir", str(tmp_path), "--work-dir", str(tmp_path / "w"))
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and str(path) in out.stderr
    assert not (tmp_path / "w").exists() and sorted(p.name for p in (tmp_path / "broken").iterdir()) == [
        RECIPE_FILE
    ]


def test_unreadable_recipe_and_unknown_name(tmp_path):
    path = tmp_path / "corrupt" / RECIPE_FILE
    path.parent.mkdir()
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read recipe"):
        load_recipe(path)
    with pytest.raises(ConfigError, match=r"no recipe for \['nope'\]"):
        find_recipes(tmp_path, ["nope"])


def test_card_shows_the_data_note_only_when_given():
    config = dict(SHIPPED[0].config)
    config.pop("data_note", None)
    assert "why this mixture" not in render_model_card(config)
    config["data_note"] = "only expert play"
    assert "- why this mixture: only expert play" in render_model_card(config)


def copy_agent(src: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    for f in src.iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    return dest


def test_record_reproduction_adds_the_rebuild_to_the_card_and_keeps_the_weights(tmp_path):
    src = next(m for m in SHIPPED if m.name == "memory-s7").path
    shipped = copy_agent(src, tmp_path / "shipped" / "memory-s7")
    rebuilt = copy_agent(src, tmp_path / "rebuilt" / "memory-s7")
    config = json.loads((rebuilt / "config.json").read_text())
    config["reproduction"]["host"] = "testhost, 2 CPU cores"
    config["reproduction"]["device"] = "cpu"
    config["results"]["headline"]["success_rate"] = 0.995
    (rebuilt / "config.json").write_text(json.dumps(config))
    weights = (shipped / "model.safetensors").read_bytes()

    for _ in range(2):  # recording the same host and device again replaces the entry
        entry = record_reproduction(shipped, rebuilt)
    recorded = json.loads((shipped / "config.json").read_text())
    earlier = json.loads((src / "config.json").read_text()).get("other_reproductions", [])
    assert recorded["other_reproductions"] == [*earlier, entry] and entry["device"] == "cpu"
    assert entry["step_seconds"]["train"] == next(
        s["seconds"] for s in config["reproduction"]["steps"] if s["step"] == "train"
    )
    card = (shipped / "model_card.md").read_text()
    assert "### Rebuilt elsewhere from the same recipe" in card
    assert "| testhost, 2 CPU cores | `cpu` |" in card and "| yes (sha256) | 99.5% (target 1) |" in card
    config["dataset"]["sha256"] = "0" * 64  # a rebuild whose data came out different says so
    (rebuilt / "config.json").write_text(json.dumps(config))
    record_reproduction(shipped, rebuilt)
    assert "| no | 99.5% (target 1) |" in (shipped / "model_card.md").read_text()
    assert (shipped / "model.safetensors").read_bytes() == weights
    assert recorded["results"] == json.loads((src / "config.json").read_text())["results"]


def test_record_reproduction_refuses_another_recipe_or_a_plain_checkpoint(tmp_path):
    src = next(m for m in SHIPPED if m.name == "memory-s7").path
    shipped = copy_agent(src, tmp_path / "shipped" / "memory-s7")
    rebuilt = copy_agent(src, tmp_path / "rebuilt" / "memory-s7")
    before = {f.name: f.read_bytes() for f in shipped.iterdir()}
    recipe = json.loads((rebuilt / RECIPE_FILE).read_text())
    recipe["train"]["steps"] += 1
    (rebuilt / RECIPE_FILE).write_text(json.dumps(recipe))
    with pytest.raises(ConfigError, match="different recipe"):
        record_reproduction(shipped, rebuilt)
    (rebuilt / RECIPE_FILE).write_bytes((src / RECIPE_FILE).read_bytes())
    config = json.loads((rebuilt / "config.json").read_text())
    del config["reproduction"]
    (rebuilt / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="no reproduction record"):
        record_reproduction(shipped, rebuilt)
    assert {f.name: f.read_bytes() for f in shipped.iterdir()} == before  # nothing recorded, nothing touched


def test_record_into_the_models_dir_itself_is_refused(tmp_path):
    out = run_reproduce("--models-dir", str(tmp_path), "--record-into", str(tmp_path))
    assert (
        out.returncode == 2 and "must differ from --models-dir" in out.stderr and out.stderr.count("\n") == 1
    )
