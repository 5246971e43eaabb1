"""The Replay & interventions and Analyses tabs without a browser.

The callbacks are thin wrappers of the functions tested here: loading an upload or a dataset episode,
parsing and applying edits, the before/after distributions, saving the trajectory, and running any
registered analysis (in the server process and in a forked background worker).
"""

from __future__ import annotations

import base64
import json
import threading
from typing import Any

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from dash_app import analyses, replay
from dash_app.cache import model_entry
from dash_app.inputs import InputError
from dash_app.jobs import job_main
from dtinterp.data.collect import collect
from dtinterp.data.dataset import load_dataset, save_dataset
from dtinterp.data.episode import Episode
from dtinterp.errors import DtinterpError
from dtinterp.interp.edits import EditError, SetRTG, apply_edits, parse_edit
from dtinterp.play.rollout import play_episode
from dtinterp.plugins.api import Analysis, AnalysisContext, AnalysisResult, Param
from dtinterp.plugins.registry import get_registry, load_registry
from envs.encoding import ACTION_NAMES, OBJECT_NAMES

MODEL = "memory-s7"


@pytest.fixture(scope="module")
def entry():
    return model_entry(MODEL)


@pytest.fixture(scope="module")
def episode(entry) -> Episode:
    """A finished greedy episode of the shipped Memory agent (7 steps, seed 3)."""
    return play_episode(entry.checkpoint, 1.0, 3)


@pytest.fixture(scope="module")
def traj(episode) -> dict:
    """The same episode as the page's store holds it."""
    return json.loads(json.dumps(episode.to_json()))


def _upload(data: bytes) -> str:
    return "data:application/octet-stream;base64," + base64.b64encode(data).decode("ascii")


# ------------------------------------------------------------------ loading and saving


def test_saved_episode_uploads_back_to_the_same_windows(entry, episode) -> None:
    data = replay.episode_npz_bytes(episode)
    back = replay.load_upload(_upload(data), "run.npz", None, entry)
    for key in ("actions", "rewards", "obs", "directions"):
        assert np.array_equal(getattr(back, key), getattr(episode, key)), key
    assert (back.target_return, back.seed, back.terminated) == (1.0, 3, episode.terminated)
    assert back.source == "file" and back.info["file"] == "run.npz"
    a, b = episode.windows(entry.checkpoint), back.windows(entry.checkpoint)
    assert all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("obs", "rtg", "actions", "timesteps"))


def test_saved_file_is_a_trajectory_file_for_the_library(entry, episode, tmp_path) -> None:
    path = tmp_path / "t.npz"
    path.write_bytes(replay.episode_npz_bytes(episode))
    ds = load_dataset(path)
    assert ds.n_episodes == 1 and ds.n_transitions == episode.length
    lib = Episode.from_dataset(ds, 0).window(entry.checkpoint)
    app = episode.window(entry.checkpoint, episode.length - 1)
    assert torch.equal(lib.rtg, app.rtg) and torch.equal(lib.obs, app.obs)


@pytest.mark.parametrize(
    ("contents", "fragment"),
    [
        (_upload(b"not a zip at all"), "is corrupt or not a dataset file"),
        (_upload(b""), "is corrupt or not a dataset file"),
        ("data:application/octet-stream;base64,@@@", "not valid base64"),
        ("no-comma", "sent no file data"),
        (None, "is empty"),
    ],
)
def test_corrupt_upload_is_a_message_naming_the_file(entry, episode, contents, fragment) -> None:
    with pytest.raises(InputError) as err:
        replay.load_upload(contents, "broken.npz", None, entry)
    assert fragment in str(err.value) and "'broken.npz'" in str(err.value)
    assert "dtinterp-upload" not in str(err.value)  # the temporary path is not shown
    # Through the callback's function: nothing changes, a message says why, no exception.
    new, keep, message = replay.load_event(
        "replay-upload", MODEL, episode, None, contents, "broken.npz", None, None
    )
    assert new is None and keep is None and "broken.npz" in message


def test_truncated_upload_is_refused(entry, episode) -> None:
    data = replay.episode_npz_bytes(episode)
    with pytest.raises(InputError, match="uploaded file 'cut.npz'"):
        replay.load_upload(_upload(data[: len(data) // 2]), "cut.npz", None, entry)


def test_upload_from_another_env_is_refused(entry, tiny_dataset, tmp_path) -> None:
    path = tmp_path / "empty.npz"
    save_dataset(tiny_dataset.select_episodes([0]), path)
    with pytest.raises(
        DtinterpError, match="'empty.npz' is in .*MiniGrid-Empty-5x5-v0.* but the model memory-s7 plays"
    ):
        replay.load_upload(_upload(path.read_bytes()), "empty.npz", None, entry)


@pytest.fixture(scope="module")
def memory_dataset(entry, tmp_path_factory):
    """Three collected episodes of the model's env, saved to disk."""
    ds = collect(entry.checkpoint.env_spec, 3, "mixed", seed=5, progress=False)
    path = tmp_path_factory.mktemp("data") / "memory.npz"
    save_dataset(ds, path)
    return ds, path


def test_dataset_episode_by_path_and_by_upload(entry, memory_dataset) -> None:
    ds, path = memory_dataset
    sl = ds.episode_slice(2)
    for got in (
        replay.load_dataset_episode(str(path), "2", entry),
        replay.load_upload(_upload(path.read_bytes()), "memory.npz", 2, entry),
    ):
        assert got.actions.tolist() == [int(a) for a in ds.actions[sl]]
        assert got.target_return is None and got.episode_return == pytest.approx(float(ds.rewards[sl].sum()))
        assert got.seed == 7  # collected with seed 5: episode 2 was reset with 5 + 2, confirmed by replay
    with pytest.raises(InputError, match="has 3 episode\\(s\\): episode 3 does not exist"):
        replay.load_dataset_episode(str(path), 3, entry)
    with pytest.raises(InputError, match="must be a non-negative integer"):
        replay.load_dataset_episode(str(path), "-1", entry)
    new, _, message = replay.load_event(
        "replay-load-dataset", MODEL, None, None, None, None, "/no/such.npz", 0
    )
    assert new is None and "'/no/such.npz' does not exist" in message


def test_use_played_brings_back_the_played_episode(entry, traj, memory_dataset) -> None:
    _, path = memory_dataset
    played = Episode.from_json({**traj, "source": "play"})
    new, keep, message = replay.load_event(
        "replay-load-dataset", MODEL, played, None, None, None, str(path), 1
    )
    assert new.source == "dataset" and keep == played.to_json() and message == ""
    back, keep2, message = replay.load_event("replay-use-played", MODEL, new, keep, None, None, None, None)
    assert back.to_json() == played.to_json() and keep2 is keep and message == ""
    none, _, message = replay.load_event("replay-use-played", MODEL, new, None, None, None, None, None)
    assert none is None and "no played episode" in message


# ------------------------------------------------------------------ edits and predictions


def test_parse_edits_reads_lines_and_reports_every_bad_one() -> None:
    text = "R3=0.5\n\n# a comment\nA2=forward  # trailing comment\nS4[1,2].object=key\n"
    assert [str(e) for e in replay.parse_edits(text)] == ["R3=0.5", "A2=forward", "S4[1,2].object=key"]
    assert replay.parse_edits("") == [] and replay.parse_edits(None) == []
    with pytest.raises(EditError) as err:
        replay.parse_edits("R1=0\nbogus\nS1[0,0].object=dragon")
    message = str(err.value)
    assert "line 2: cannot parse edit 'bogus'" in message
    assert "line 3: edit 'S1[0,0].object=dragon': unknown object 'dragon'" in message
    assert "\n" not in message


def test_before_after_are_the_contexts_softmax(entry, episode) -> None:
    step = 5  # where the Memory agent picks the matching object: the RTG matters
    inputs = episode.window(entry.checkpoint, step)
    edits = [parse_edit("R*=0.0")]
    before, after, edited = replay.predict_before_after(entry, inputs, edits)
    ctx = AnalysisContext(entry.model, inputs, entry.checkpoint.meta, edits)  # an independent context
    np.testing.assert_allclose(before, torch.softmax(ctx.logits[0, -1], -1).numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(after, torch.softmax(ctx.cf_logits[0, -1], -1).numpy(), rtol=0, atol=1e-6)
    assert torch.equal(edited.rtg, ctx.counterfactual.rtg)
    assert not np.array_equal(before, after)
    assert before.sum() == pytest.approx(1.0, abs=1e-5) and after.sum() == pytest.approx(1.0, abs=1e-5)
    alone, none, no_edit = replay.predict_before_after(entry, inputs, [])
    np.testing.assert_array_equal(alone, before)
    assert none is None and no_edit is None


def test_identity_edits_leave_the_distribution_identical(entry, episode) -> None:
    inputs = episode.window(entry.checkpoint, 5)
    K = inputs.context_len
    obj = int(inputs.obs[0, K - 1, 3, 5, 0])
    identity = [
        parse_edit(str(SetRTG(K, float(inputs.rtg[0, K - 1]) * entry.checkpoint.rtg_scale))),
        parse_edit(f"A{K - 1}={ACTION_NAMES[int(inputs.actions[0, K - 2])]}"),
        parse_edit(f"S{K}[3,5].object={OBJECT_NAMES[obj]}"),
        parse_edit(f"T{K}={int(inputs.timesteps[0, K - 1])}"),
    ]
    before, after, edited = replay.predict_before_after(entry, inputs, identity)
    assert all(
        torch.equal(getattr(edited, f), getattr(inputs, f)) for f in ("obs", "rtg", "actions", "timesteps")
    )
    np.testing.assert_array_equal(before, after)


def test_replay_view_flags_exactly_the_edited_tokens(entry, episode) -> None:
    v = replay.replay_view(entry, episode, 5, "R*=0.0\nS10.direction=left")
    assert v["message"] == "" and v["applied"] and v["edits"] == ["R*=0.0", "S10.direction=left"]
    real = {t["label"] for t in v["tokens"] if not t["pad"]}
    flagged = {t["label"] for t in v["tokens"] if t["edited"]}
    assert flagged == {label for label in real if label.startswith("R")} | {"S10"}
    assert v["pov_edited"] is not None and v["after"] is not None
    assert [k for k, _ in v["timesteps"]] == list(range(5, 11))  # steps 0..5 fill the last 6 slots


def test_bad_edits_show_a_message_and_the_clean_window(entry, episode) -> None:
    for text, fragment in (
        ("A1=left", "timestep 1 is padding in this window"),
        ("S10[7,0].object=key", "cell (7, 0) is outside the 7x7 grid"),
        ("S10[1,1].object=unicorn", "unknown object 'unicorn'"),
        ("A10=left", "the last action is the one predicted"),
        ("R11=0", "outside the window 1..10"),
    ):
        v = replay.replay_view(entry, episode, 5, text)
        assert fragment in v["message"], text
        assert v["before"] is not None and v["after"] is None
        assert not v["applied"] and v["edits"] == []
        assert not any(t["edited"] for t in v["tokens"])
    v = replay.replay_view(entry, episode, 99, "")
    assert "step 99 out of range" in v["message"] and v["before"] is None


def test_helper_rows_write_edits_that_parse_back() -> None:
    values = {
        "rtg": 0.25,
        "action": "pickup",
        "x": 2,
        "y": 6,
        "object": "key",
        "colour": "red",
        "state": None,
    }
    values["direction"] = "up"
    assert replay.helper_edits("rtg", 3, values, 10) == ["R3=0.25"]
    assert replay.helper_edits("rtg", "*", values, 10) == ["R*=0.25"]
    assert replay.helper_edits("action", "4", values, 10) == ["A4=pickup"]
    assert replay.helper_edits("cell", 10, values, 10) == ["S10[2,6].object=key", "S10[2,6].colour=red"]
    assert replay.helper_edits("direction", 1, values, 10) == ["S1.direction=up"]
    for kind in replay.HELPER_KINDS:
        for line in replay.helper_edits(kind, 2, values, 10):
            assert str(parse_edit(line)) == line
    with pytest.raises(InputError, match="choose the timestep"):
        replay.helper_edits("action", "*", values, 10)
    with pytest.raises(InputError, match="outside the window 1..10"):
        replay.helper_edits("action", 11, values, 10)
    with pytest.raises(InputError, match="choose an object, a colour or a state"):
        replay.helper_edits("cell", 2, {**values, "object": None, "colour": None}, 10)
    with pytest.raises(InputError, match="finite return-to-go"):
        replay.helper_edits("rtg", 2, {**values, "rtg": None}, 10)
    with pytest.raises(InputError, match="finite return-to-go"):
        replay.helper_edits("rtg", 2, {**values, "rtg": "abc"}, 10)
    assert replay.append_lines("R1=0\n", ["A1=left"]) == "R1=0\nA1=left"
    assert replay.append_lines("", ["A1=left"]) == "A1=left"


# ------------------------------------------------------------------ analyses


class LastLogits(Analysis):
    """Test plugin: the logits of every window's last state and the batch size."""

    id = "test-last-logits"
    title = "Last logits"
    category = "dynamic"
    parameters = (Param("scale", "float", 1.0, "Multiplier.", min=0.0),)

    def compute(self, ctx: AnalysisContext, params: dict[str, Any]) -> AnalysisResult:
        logits = ctx.logits[:, -1] * params["scale"]
        return AnalysisResult(self.id, params, {"logits": logits, "batch": ctx.inputs.batch_size}, "ok")

    def figures(self, result: AnalysisResult) -> list[Any]:
        return [go.Figure(go.Heatmap(z=np.asarray(result.data["logits"])))]


class CfLogits(LastLogits):
    id = "test-cf-logits"
    category = "causal"
    needs_counterfactual = True

    def compute(self, ctx: AnalysisContext, params: dict[str, Any]) -> AnalysisResult:
        data = {"clean": ctx.logits[:, -1], "cf": ctx.cf_logits[:, -1], "logits": ctx.cf_logits[:, -1]}
        return AnalysisResult(self.id, params, data, "cf")


class Boom(LastLogits):
    id = "test-boom"

    def compute(self, ctx: AnalysisContext, params: dict[str, Any]) -> AnalysisResult:
        return 1 / 0


@pytest.fixture(scope="module")
def test_registry():
    reg = load_registry(include_entry_points=False)
    for cls in (LastLogits, CfLogits, Boom):
        reg.add(cls, f"tests:{cls.__name__}")
    assert not reg.failures
    return reg


def _logits(r: dict, key: str = "logits") -> torch.Tensor:
    return torch.tensor(json.loads(r["result_json"])["data"][key])


def test_every_registered_plugin_runs_and_reports(traj) -> None:
    registry = get_registry()
    assert registry.plugins
    stages: list[int] = []
    for pid, plugin in registry.plugins.items():
        stages.clear()
        windows = analyses.WINDOWS_EPISODE if plugin.min_windows > 1 else analyses.WINDOWS_STEP  # as the tab
        r = analyses.run_in_app(
            MODEL,
            traj,
            5,
            pid,
            {},
            windows=windows,
            edits=["R*=0.0"],
            progress=lambda i, _text: stages.append(i),
        )
        assert r["ok"], (pid, r["message"])
        assert r["figures"] and all(isinstance(f, go.Figure) for f in r["figures"]), pid
        assert stages == [0, 1, 2, 3]
        assert json.loads(r["result_json"])["plugin_id"] == pid
        # The HTML download is rebuilt from the figures as the page holds them (JSON dicts).
        page_figures = [json.loads(f.to_json()) for f in r["figures"]]
        html = analyses.report_html(r["report"], page_figures)
        assert html.count('<div id="figure-') == len(r["figures"]) and plugin.title in html
        if plugin.needs_counterfactual:
            bad = analyses.run_in_app(MODEL, traj, 5, pid, {}, edits=[])
            assert not bad["ok"] and "give at least one edit" in bad["message"]


def test_targets_and_windows_select_the_inputs(entry, episode, traj, test_registry) -> None:
    edits = ["R*=0.0"]
    inputs = episode.window(entry.checkpoint, 5)
    edited = apply_edits(inputs, [parse_edit(e) for e in edits], entry.checkpoint.rtg_scale)
    with torch.inference_mode():
        clean_logits, edited_logits = entry.model(inputs)[:, -1], entry.model(edited)[:, -1]

    def run(pid: str, **kw: Any) -> dict:
        r = analyses.run_in_app(MODEL, traj, 5, pid, {"scale": 2.0}, registry=test_registry, **kw)
        assert r["ok"], r["message"]
        return r

    torch.testing.assert_close(_logits(run("test-last-logits")), 2 * clean_logits)
    torch.testing.assert_close(
        _logits(run("test-last-logits", target="edited", edits=edits)), 2 * edited_logits
    )
    cf = run("test-cf-logits", edits=edits)  # compares clean and edited whatever the target
    torch.testing.assert_close(_logits(cf, "clean"), clean_logits)
    torch.testing.assert_close(_logits(cf, "cf"), edited_logits)
    episode = run("test-last-logits", windows="episode")
    assert json.loads(episode["result_json"])["data"]["batch"] == len(traj["actions"])
    r = analyses.run_in_app(MODEL, traj, 5, "test-last-logits", {}, "edited", registry=test_registry)
    assert not r["ok"] and "no edits were given" in r["message"]


def test_failures_are_one_line_messages_and_others_keep_working(traj, test_registry) -> None:
    r = analyses.run_in_app(MODEL, traj, 5, "test-boom", {}, registry=test_registry)
    assert not r["ok"] and r["figures"] == []
    assert r["message"] == "plugin 'test-boom' failed at compute: ZeroDivisionError: division by zero"
    assert analyses.run_in_app(MODEL, traj, 5, "test-last-logits", {}, registry=test_registry)["ok"]
    for pid, params, target, edits, fragment in (
        ("test-last-logits", {"scale": -1.0}, "clean", [], "below the minimum 0"),
        ("test-last-logits", {"scale": None}, "clean", [], "enter a valid number"),
        ("no-such", {}, "clean", [], "unknown analysis 'no-such'"),
        ("test-last-logits", {}, "edited", ["bogus"], "cannot parse edit 'bogus'"),
    ):
        r = analyses.run_in_app(MODEL, traj, 5, pid, params, target, edits=edits, registry=test_registry)
        assert not r["ok"] and fragment in r["message"], (pid, r["message"])
    r = analyses.run_in_app(MODEL, None, None, "test-last-logits", {}, registry=test_registry)
    assert not r["ok"] and "no episode" in r["message"]
    r = analyses.run_in_app(
        MODEL, traj, 5, "test-last-logits", {}, "edited", "episode", ["A1=left"], registry=test_registry
    )
    assert not r["ok"] and "padding" in r["message"]  # the early windows of the episode are padded at A1


def test_forked_worker_ignores_locks_held_in_the_server(entry, traj, test_registry) -> None:
    """A background run in a forked worker completes even while a server thread holds the model's lock."""
    multiprocess = pytest.importorskip("multiprocess")
    fork = multiprocess.get_context("fork")
    queue = fork.Queue()

    def job() -> None:
        r = analyses.run_in_app(MODEL, traj, 5, "test-last-logits", {}, registry=test_registry)
        queue.put((r["ok"], r["message"], r["result_json"]))

    here = analyses.run_in_app(MODEL, traj, 5, "test-last-logits", {}, registry=test_registry)
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with entry.lock:
            held.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    proc = fork.Process(target=job_main, args=(job,))  # as JobManager starts a background job
    try:
        proc.start()
        ok, message, result_json = queue.get(timeout=60)
        proc.join(10)
    finally:
        if proc.is_alive():
            proc.kill()
        release.set()
        holder.join()
    assert ok, message
    assert proc.exitcode == 0
    assert result_json == here["result_json"]


def test_target_text_names_the_step_windows_and_edits(traj) -> None:
    text = analyses.target_text(MODEL, traj, 5, ["R*=0.0"], "step", "edited")
    assert "step 5 of a 7-step episode" in text and "edited windows" in text and "R*=0.0" in text
    text = analyses.target_text(MODEL, traj, 5, [], "episode", "clean")
    assert "every taken step (0..6)" in text and "clean windows" in text
    assert "no episode yet" in analyses.target_text(MODEL, None, None, [], "step", "clean")


def test_a_run_states_exactly_what_it_ran_on_and_its_provenance(entry, traj, test_registry) -> None:
    r = analyses.run_in_app(
        MODEL, traj, 4, "test-last-logits", {}, "edited", edits=["R*=0.5"], registry=test_registry
    )
    assert r["ok"], r["message"]
    assert "the edited windows" in r["ran_on"] and "steps: 4" in r["ran_on"] and "R*=0.5" in r["ran_on"]
    prov = json.loads(r["result_json"])["provenance"]
    assert prov["model"]["name"] == "memory-s7" and len(prov["model"]["weights_sha256"]) == 64
    assert prov["inputs"]["episode"]["seed"] == 3 and prov["inputs"]["steps"] == [4]
    assert prov["edits"] == ["R*=0.5"] and prov["target"] == "the edited windows"
    html = analyses.report_html(r["report"], r["figures"])
    assert "Provenance" in html and "weights_sha256" in html


def test_static_analyses_run_without_an_episode() -> None:
    r = analyses.run_in_app(MODEL, None, None, "time-embeddings", {})
    assert r["ok"], r["message"]
    assert "weights only" in r["ran_on"]
