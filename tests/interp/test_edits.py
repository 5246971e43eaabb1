"""The token-edit library: parsing, printing, applying, and what an edit may not touch."""

from __future__ import annotations

from dataclasses import fields

import pytest
import torch

from dtinterp.interp.edits import (
    EditError,
    SetAction,
    SetCell,
    SetDirection,
    SetRTG,
    SetTimestep,
    apply_edits,
    parse_edit,
)
from dtinterp.model import DTConfig, DTInputs, HookedDecisionTransformer
from envs.encoding import ACTION_NAMES, COLOR_NAMES, DIRECTION_NAMES, OBJECT_NAMES, STATE_NAMES

K = 4


@pytest.fixture(scope="module")
def model() -> HookedDecisionTransformer:
    cfg = DTConfig(context_len=K, n_layers=2, n_heads=2, d_model=32, d_mlp=64, max_timestep=50, seed=1)
    model = HookedDecisionTransformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def make_inputs(batch: int = 2, n_pad: int = 1) -> DTInputs:
    """Random valid windows; row 0 left-padded by ``n_pad`` timesteps (with padding values)."""
    g = torch.Generator().manual_seed(0)
    obs = torch.stack([torch.randint(0, n, (batch, K, 7, 7), generator=g) for n in (11, 6, 3)], -1)
    inputs = DTInputs(
        obs=obs.to(torch.uint8),
        directions=torch.randint(0, 4, (batch, K), generator=g),
        rtg=torch.rand(batch, K, generator=g),
        actions=torch.randint(0, 7, (batch, K), generator=g),
        timesteps=torch.arange(3, 3 + K).expand(batch, K).clone(),
        pad_mask=torch.ones(batch, K, dtype=torch.bool),
    )
    inputs.pad_mask[0, :n_pad] = False
    inputs.obs[0, :n_pad] = 0
    inputs.rtg[0, :n_pad] = 0
    inputs.actions[0, :n_pad] = 7
    return inputs


@pytest.mark.parametrize(
    "text, edit",
    [
        ("R3=0.5", SetRTG(3, 0.5)),
        ("R*=0.5", SetRTG(None, 0.5)),
        ("R1=-2e-3", SetRTG(1, -0.002)),
        ("A2=forward", SetAction(2, ACTION_NAMES.index("forward"))),
        ("A2=5", SetAction(2, 5)),
        ("S2[4,2].object=key", SetCell(2, 4, 2, "object", OBJECT_NAMES.index("key"))),
        ("S2[4,2].colour=red", SetCell(2, 4, 2, "colour", COLOR_NAMES.index("red"))),
        ("S2[4,2].color=red", SetCell(2, 4, 2, "colour", COLOR_NAMES.index("red"))),
        ("S1[0,6].state=locked", SetCell(1, 0, 6, "state", STATE_NAMES.index("locked"))),
        ("S2.direction=left", SetDirection(2, DIRECTION_NAMES.index("left"))),
        ("T3=10", SetTimestep(3, 10)),
        (" S2 [4, 2] .object = key ", SetCell(2, 4, 2, "object", OBJECT_NAMES.index("key"))),
    ],
)
def test_parse_every_syntax(text, edit):
    assert parse_edit(text) == edit


@pytest.mark.parametrize(
    "edit",
    [
        SetRTG(3, 0.5),
        SetRTG(None, 0.1234567891),
        SetRTG(2, -1e-9),
        SetRTG(1, 1.0),
        *[SetAction(2, a) for a in range(len(ACTION_NAMES))],
        *[SetCell(3, 1, 5, "object", v) for v in range(len(OBJECT_NAMES))],
        *[SetCell(1, 0, 0, "colour", v) for v in range(len(COLOR_NAMES))],
        *[SetCell(4, 6, 6, "state", v) for v in range(len(STATE_NAMES))],
        *[SetDirection(1, d) for d in range(len(DIRECTION_NAMES))],
        SetTimestep(4, 0),
        SetTimestep(1, 249),
    ],
    ids=str,
)
def test_str_round_trips_through_parse(edit):
    assert parse_edit(str(edit)) == edit


@pytest.mark.parametrize(
    "text, match",
    [
        ("X3=1", "cannot parse edit 'X3=1'"),
        ("R3", "cannot parse"),
        ("R3=lots", "'lots' is not a number"),
        ("R3=nan", "must be finite"),
        ("R*=inf", "must be finite"),
        ("A2=jump", "unknown action 'jump'"),
        ("A2=7", "unknown action '7'"),
        ("S2[4,2].object=dragon", "unknown object 'dragon'"),
        ("S2[4,2].colour=orange", "unknown colour 'orange'"),
        ("S2[4,2].size=3", "cannot parse"),
        ("S2.direction=north", "unknown direction 'north'"),
        ("T3=-1", "cannot parse"),
    ],
)
def test_unparseable_edits_are_one_line_errors_naming_the_text(text, match):
    with pytest.raises(EditError, match=match) as err:
        parse_edit(text)
    assert "\n" not in str(err.value)


def test_apply_edits_never_mutates_its_input_and_changes_only_the_edited_entries():
    inputs = make_inputs()
    before = inputs.clone()
    edits = [parse_edit(t) for t in ("R3=0.5", "A2=toggle", "S4[1,2].object=key", "S3.direction=up", "T2=40")]
    out = apply_edits(inputs, edits, rtg_scale=2.0)
    for f in fields(DTInputs):
        assert torch.equal(getattr(inputs, f.name), getattr(before, f.name)), f.name
    assert float(out.rtg[0, 2]) == 0.25 and float(out.rtg[1, 2]) == 0.25  # every row, in model units
    assert (out.actions[:, 1] == ACTION_NAMES.index("toggle")).all()
    assert (out.obs[:, 3, 1, 2, 0] == OBJECT_NAMES.index("key")).all()
    assert (out.directions[:, 2] == DIRECTION_NAMES.index("up")).all()
    assert (out.timesteps[:, 1] == 40).all()
    changed = (out.obs != inputs.obs).nonzero().tolist()
    assert {(k, x, y, c) for _, k, x, y, c in changed} <= {(3, 1, 2, 0)}
    expected_rtg = inputs.rtg.clone()
    expected_rtg[:, 2] = 0.25
    assert torch.equal(out.rtg, expected_rtg) and torch.equal(out.pad_mask, inputs.pad_mask)


def test_rtg_star_sets_real_timesteps_only():
    inputs = make_inputs(n_pad=2)
    out = apply_edits(inputs, [parse_edit("R*=0.8")], rtg_scale=1.0)
    assert torch.equal(out.rtg[0], torch.tensor([0.0, 0.0, 0.8, 0.8]))
    assert torch.equal(out.rtg[1], torch.full((K,), 0.8))


def test_identity_edits_change_no_logit(model):
    inputs = make_inputs()
    b = inputs[1:]  # a row without padding, so every timestep may be edited
    identity = [
        SetRTG(2, float(b.rtg[0, 1])),
        SetAction(3, int(b.actions[0, 2])),
        SetCell(4, 2, 5, "object", int(b.obs[0, 3, 2, 5, 0])),
        SetCell(1, 0, 0, "colour", int(b.obs[0, 0, 0, 0, 1])),
        SetDirection(2, int(b.directions[0, 1])),
        SetTimestep(3, int(b.timesteps[0, 2])),
    ]
    out = apply_edits(b, identity, rtg_scale=1.0)
    with torch.no_grad():
        assert torch.equal(model(out), model(b))
        # A real edit does move the logits, from its own timestep on (and never before it).
        moved = model(apply_edits(b, [SetCell(3, 2, 5, "object", (int(b.obs[0, 2, 2, 5, 0]) + 1) % 11)]))
        base = model(b)
    assert torch.equal(moved[:, :2], base[:, :2])
    assert not torch.allclose(moved[:, 2], base[:, 2], atol=1e-5)


@pytest.mark.parametrize(
    "text, match",
    [
        ("R5=0.5", "timestep 5 is outside the window 1..4"),
        ("A0=left", "timestep 0 is outside the window 1..4"),
        ("T9=3", "timestep 9 is outside the window"),
        ("R1=0.5", "timestep 1 is padding in this window"),
        ("S1.direction=up", "timestep 1 is padding"),
        ("S2[7,0].object=key", r"cell \(7, 0\) is outside the 7x7 grid"),
        ("S2[0,9].state=open", r"cell \(0, 9\) is outside the 7x7 grid"),
        ("A4=left", "the last action is the one predicted"),
    ],
)
def test_edits_that_cannot_apply_name_the_edit(text, match):
    edit = parse_edit(text)
    inputs = make_inputs(n_pad=1)
    with pytest.raises(EditError, match=match) as err:
        apply_edits(inputs, [edit])
    assert str(err.value).startswith(f"edit {edit}: ") and "\n" not in str(err.value)
