"""App state without a browser: trajectory JSON, windows, play logic, LRUs and session isolation.

The callbacks are thin wrappers of the functions tested here (``play_event``, ``play_view``,
``history_view``, ``choose_model``), so these tests exercise what a click does.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from dash_app.state import (
    CONTEXTS,
    ENVS,
    LRU,
    MODELS,
    EnvCache,
    action_probs,
    check_traj,
    dataset_to_traj,
    decode_obs,
    default_model_key,
    encode_obs,
    episode_seed,
    model_entry,
    step_window,
    traj_rtg,
    traj_to_dataset,
)
from dtinterp.interp.trajectory import TrajectoryError, episode_window, rollout_trajectory
from dtinterp.train.rollout import rollout

from dash_app import ids
from dash_app.history import history_view, window_tokens
from dash_app.layout import choose_model, layout
from dash_app.play import dt_run_to_end, dt_step, play_event, play_view, reset_episode, take_action
from dtinterp.data.dataset import load_dataset, save_dataset
from dtinterp.model.inputs import token_labels
from envs.encoding import ACTION_NAMES, compact_obs
from envs.spec import EnvSpec, make_env

MODEL = "memory-s7"
LEFT, RIGHT, FORWARD = 0, 1, 2


@pytest.fixture(scope="module")
def entry():
    return model_entry(MODEL)


def _no_hooks(entry) -> bool:
    return all(not hp.fwd_hooks and not hp.bwd_hooks for hp in entry.model.hook_points())


def _played(entry, session: str, seed: int, actions: list[int], target: float = 1.0) -> dict:
    traj = reset_episode(session, entry, seed, target)
    for a in actions:
        traj = take_action(session, traj, a)
    return traj


def _env_replay(spec, seed: int, actions: list[int]):
    """Observations, directions and rewards of ``actions`` played straight in a fresh env."""
    env = make_env(spec)
    o, _ = env.reset(seed=seed)
    grids, dirs, rewards, done = [], [], [], False
    for a in actions:
        g, d = compact_obs(o)
        grids.append(g)
        dirs.append(d)
        o, r, term, trunc, _ = env.step(a)
        rewards.append(float(np.float32(r)))  # the app keeps rewards at dataset (float32) precision
        done = term or trunc
    if not done:
        g, d = compact_obs(o)
        grids.append(g)
        dirs.append(d)
    env.close()
    return np.stack(grids), dirs, rewards


def test_obs_encoding_round_trip():
    rng = np.random.default_rng(0)
    obs = rng.integers(0, 11, size=(5, 7, 7, 3), dtype=np.uint8)
    assert np.array_equal(decode_obs(encode_obs(obs), (7, 7, 3)), obs)
    with pytest.raises(TrajectoryError, match="whole number"):
        decode_obs(encode_obs(obs)[:-4], (7, 7, 3))


def test_played_episode_equals_direct_env_replay(entry):
    actions = [FORWARD, LEFT, FORWARD, FORWARD, RIGHT, 3, 5]
    traj, msg = play_event(None, "s-replay", MODEL, None, "7", "0.5")
    assert msg == "" and traj["seed"] == 7 and traj["target_rtg"] == 0.5
    for a in actions:
        traj, msg = play_event(ids.PLAY_ACTION_BUTTONS[a], "s-replay", MODEL, traj, "7", "0.5")
        assert msg == ""
    traj = json.loads(json.dumps(traj))  # what the browser store hands back
    grids, dirs, rewards = _env_replay(entry.spec, 7, actions)
    assert np.array_equal(check_traj(traj), grids)
    assert traj["directions"] == dirs and traj["rewards"] == rewards and traj["actions"] == actions


def test_traj_dataset_round_trip_and_load_validation(entry, tmp_path):
    traj = dt_run_to_end("s-round", entry, reset_episode("s-round", entry, 3, 1.0))
    assert traj["done"]
    ds = traj_to_dataset(traj)
    path = tmp_path / "episode.npz"
    save_dataset(ds, path)
    loaded = load_dataset(path)
    assert loaded.n_episodes == 1 and loaded.n_transitions == len(traj["actions"])
    back = dataset_to_traj(loaded, 0, MODEL, source="play")
    assert back == traj  # seed recovered (and verified by replay), target, every step
    for t in range(len(traj["actions"])):
        ref = episode_window(loaded, 0, t, entry.model, entry.rtg_scale, env_spec=entry.spec)
        win = step_window(traj, entry, t)
        for name in ("obs", "directions", "actions", "timesteps", "pad_mask", "rtg"):
            assert torch.equal(getattr(win, name), getattr(ref, name)), (t, name)


def test_live_episode_has_no_dataset_steps_yet(entry):
    traj = reset_episode("s-empty", entry, 0, 1.0)
    with pytest.raises(TrajectoryError, match="no steps"):
        traj_to_dataset(traj)


def test_dt_run_to_end_is_the_rollout(entry):
    """The app's DT play is the library's greedy rollout: same actions, rewards and model inputs."""
    seen = []
    ref = rollout(
        entry.model,
        entry.spec,
        1.0,
        [11],
        num_envs=1,
        rtg_scale=entry.rtg_scale,
        record=True,
        progress=False,
        inspect=lambda _e, _t, inputs: seen.append(inputs.clone()),
    )[0]
    traj = dt_run_to_end("s-rollout", entry, reset_episode("s-rollout", entry, 11, 1.0))
    assert traj["actions"] == ref.trajectory.actions.tolist()
    assert np.allclose(traj["rewards"], ref.trajectory.rewards)
    assert traj["done"] and traj["terminated"] == bool(ref.trajectory.terminated[-1])
    # The live window at each step (pad action last) is exactly the batch the rollout fed the model.
    partial = {**traj, "done": False, "terminated": False}
    for t in range(len(traj["actions"])):
        live = {
            **partial,
            "actions": traj["actions"][:t],
            "rewards": traj["rewards"][:t],
            "directions": traj["directions"][: t + 1],
            "obs_b64": encode_obs(check_traj(traj)[: t + 1]),
        }
        win = step_window(live, entry, t)
        for name in ("obs", "directions", "actions", "timesteps", "pad_mask"):
            assert torch.equal(getattr(win, name), getattr(seen[t], name)), (t, name)
        assert torch.allclose(win.rtg, seen[t].rtg)
    assert rollout_trajectory(entry.model, entry.meta, 1.0, 11).actions.tolist() == traj["actions"]


def test_action_probs_are_softmax_of_window_logits(entry):
    traj = _played(entry, "s-probs", 5, [FORWARD, FORWARD, LEFT, FORWARD])
    ds = traj_to_dataset(traj)
    for t in range(len(traj["actions"])):
        win = episode_window(ds, 0, t, entry.model, entry.rtg_scale, env_spec=entry.spec)
        with torch.no_grad():
            expected = torch.softmax(entry.model(win)[0, -1], -1).numpy()
        assert np.allclose(action_probs(entry, traj, t), expected, atol=1e-6)
    # The Play tab's chart shows the distribution at the current (live) state.
    view = play_view("s-probs", MODEL, traj)
    assert view["message"] == ""
    assert np.allclose(view["probs"], action_probs(entry, traj, len(traj["actions"])))
    assert np.isclose(view["probs"].sum(), 1.0)


def test_dt_step_takes_the_argmax(entry):
    traj = reset_episode("s-argmax", entry, 2, 1.0)
    best = int(np.argmax(action_probs(entry, traj)))
    assert dt_step("s-argmax", entry, traj)["actions"] == [best]


def test_no_hooks_left_after_play_history_and_analysis_context(entry):
    traj, _ = play_event(None, "s-hooks", MODEL, None, "1", "1")
    for event in (ids.PLAY_DT_STEP, ids.PLAY_ACTION_BUTTONS[FORWARD], ids.PLAY_DT_RUN):
        traj, _ = play_event(event, "s-hooks", MODEL, traj, "1", "1")
    play_view("s-hooks", MODEL, traj)
    history_view("s-hooks", MODEL, traj, 1)
    ctx = CONTEXTS.get(entry, step_window(traj, entry, 1))
    with entry.lock:
        assert ctx.cache["blocks.0.hook_resid_pre"].shape[0] == 1
    assert _no_hooks(entry)


def test_lru_is_bounded_and_evicts_least_recent():
    evicted = []
    lru = LRU(3, on_evict=lambda k, v: evicted.append(k))
    for i in range(3):
        lru.put(i, str(i))
    assert lru.get(0) == "0"  # 0 becomes the most recent
    lru.put(3, "3")
    lru.put(4, "4")
    assert len(lru) == 3 and set(lru.keys()) == {0, 3, 4} and evicted == [1, 2]
    lru.put(4, "four")  # replacing a value hands the old one to on_evict
    assert evicted == [1, 2, 4] and lru.get(4) == "four"
    with pytest.raises(ValueError):
        LRU(0)


def test_env_cache_is_bounded(entry):
    cache = EnvCache(maxsize=2)
    traj = reset_episode("s-bound", entry, 0, 1.0)
    for s in ("a", "b", "c"):
        cache.checkin(s, traj, make_env(entry.spec))
    assert len(cache) == 2 and [k[0] for k in list(cache.keys())] == ["b", "c"]


def test_sessions_are_isolated(entry):
    a = _played(entry, "session-a", 4, [FORWARD])
    b = _played(entry, "session-b", 4, [LEFT])
    keys = ENVS.keys()
    a_keys = [k for k in keys if k[0] == "session-a"]
    b_keys = [k for k in keys if k[0] == "session-b"]
    assert a_keys and b_keys and not set(a_keys) & set(b_keys)
    # Each session continues its own episode, whatever the other does in between.
    for _ in range(3):
        a = take_action("session-a", a, FORWARD)
        b = take_action("session-b", b, RIGHT)
    for traj, session in ((a, "session-a"), (b, "session-b")):
        grids, _, _ = _env_replay(entry.spec, 4, traj["actions"])
        assert np.array_equal(check_traj(traj), grids), session
    # Same seed and length but different actions never share an env, even within one session.
    c = _played(entry, "session-a", 4, [LEFT, FORWARD, FORWARD, FORWARD])
    assert c["actions"] != a["actions"] and not np.array_equal(check_traj(c), check_traj(a))


def test_env_cache_miss_resimulates_and_checks_the_trajectory(entry):
    traj = _played(entry, "s-owner", 6, [FORWARD, FORWARD, RIGHT])
    moved = take_action("s-stranger", traj, FORWARD)  # nothing cached for this session: re-simulated
    grids, _, _ = _env_replay(entry.spec, 6, moved["actions"])
    assert np.array_equal(check_traj(moved), grids)
    obs = check_traj(traj).copy()
    obs[-1, 3, 3, 0] = (obs[-1, 3, 3, 0] + 1) % 11
    forged = {**traj, "obs_b64": encode_obs(obs)}
    with pytest.raises(TrajectoryError, match="does not replay"):
        take_action("s-forger", forged, FORWARD)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"version": 2}, "version"),
        ({"source": "magic"}, "source"),
        ({"target_rtg": float("nan")}, "target_rtg"),
        ({"actions": [9]}, "actions"),
        ({"obs_b64": "!!"}, "base64"),
        ({"directions": []}, "directions"),
        ({"env_spec": {"env_id": "NoSuchEnv-v0"}}, "env_spec"),
        ({"done": True}, "observations"),
    ],
)
def test_bad_trajectory_json_is_one_line_error(entry, change, match):
    traj = reset_episode("s-bad", entry, 0, 1.0)
    with pytest.raises(TrajectoryError, match=match) as err:
        check_traj({**traj, **change})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "seed, target, match",
    [
        ("0", "abc", "not a number"),
        ("0", "nan", "finite"),
        ("0", "11", "between"),
        ("-1", "1", "seed"),
        ("x", "1", "seed"),
    ],
)
def test_play_bad_inputs_show_a_message(seed, target, match):
    traj, msg = play_event(ids.PLAY_RESET, "s-inputs", MODEL, None, seed, target)
    assert traj is None and match in msg


def test_play_after_episode_end_and_bad_model_show_messages(entry):
    traj = dt_run_to_end("s-over", entry, reset_episode("s-over", entry, 0, 1.0))
    new, msg = play_event(ids.PLAY_ACTION_BUTTONS[FORWARD], "s-over", MODEL, traj, "0", "1")
    assert new is None and "over" in msg
    new, msg = play_event(ids.PLAY_RESET, "s-over", "/no/such/checkpoint", traj, "0", "1")
    assert new is None and "/no/such/checkpoint" in msg


def test_target_edit_reconditions_only_a_fresh_episode(entry):
    traj = reset_episode("s-target", entry, 0, 1.0)
    new, msg = play_event(ids.PLAY_TARGET_RTG, "s-target", MODEL, traj, "0", "0.25")
    assert msg == "" and new["target_rtg"] == 0.25 and new["obs_b64"] == traj["obs_b64"]
    moved = take_action("s-target", traj, FORWARD)
    new, msg = play_event(ids.PLAY_TARGET_RTG, "s-target", MODEL, moved, "0", "0.25")
    assert new is None and "next reset" in msg


def test_history_tokens_describe_the_window(entry):
    traj = _played(entry, "s-hist", 0, [FORWARD, LEFT, FORWARD])
    view = history_view("s-hist", MODEL, traj, 2)
    assert view["message"] == "" and view["world"].startswith("data:image/png;base64,")
    toks = view["tokens"]
    k = entry.model.cfg.context_len
    assert [t["label"] for t in toks] == token_labels(k)
    real = [t for t in toks if not t["pad"]]
    # Steps 0..2 are in the window: R, S, A for steps 0 and 1, then R, S of step 2.
    assert [t["value"] for t in real] == [
        f"{traj_rtg(traj, 0):.3f}",
        "obs@0",
        "forward",
        f"{traj_rtg(traj, 1):.3f}",
        "obs@1",
        "left",
        f"{traj_rtg(traj, 2):.3f}",
        "obs@2",
    ]
    assert window_tokens(step_window(traj, entry, 2), entry.rtg_scale) == toks
    assert ACTION_NAMES[traj["actions"][2]] in dict(view["info"])["action"]


def test_history_without_seed_shows_pov_only(entry, tiny_dataset):
    traj = {**_played(entry, "s-noseed", 0, [FORWARD, LEFT]), "seed": None}
    view = history_view("s-noseed", MODEL, traj, 1)
    assert view["world"] is None and view["pov"] and "seed" in view["note"] and view["message"] == ""
    assert len(view["tokens"]) == len(token_labels(entry.model.cfg.context_len))
    # A trajectory from another env is shown (its view), and its window refused with a message.
    other = dataset_to_traj(tiny_dataset, 0, MODEL)
    view = history_view("s-noseed", MODEL, other, 0)
    assert view["pov"] and view["world"] and "model plays" in view["message"] and view["tokens"] == []


def test_dataset_episode_seed_is_verified_by_replay():
    from dtinterp.interp.trajectory import extract_episode

    from dtinterp.data.collect import collect

    ds = collect(EnvSpec("MiniGrid-DoorKey-5x5-v0"), 3, "expert", seed=40, progress=False)
    assert [episode_seed(ds, e) for e in range(3)] == [40, 41, 42]
    assert episode_seed(extract_episode(ds, 2), 0) == 42  # a cut-out episode keeps its source index
    wrong = replace(ds, metadata={**ds.metadata, "seed": 7})
    assert [episode_seed(wrong, e) for e in range(3)] == [None] * 3  # replay refutes a wrong seed
    traj = dataset_to_traj(ds, 1, MODEL)
    grids, _, rewards = _env_replay(ds.env_spec, 41, traj["actions"])
    assert traj["seed"] == 41 and np.array_equal(check_traj(traj), grids) and traj["rewards"] == rewards


def test_demo_episode_windows_keep_their_achieved_return_to_go(entry, tiny_dataset):
    """A demonstration's target is its achieved return, so its windows condition on its return-to-go."""
    from dtinterp.data.windows import window_at

    traj = dataset_to_traj(tiny_dataset, 1, MODEL)
    ds = traj_to_dataset(traj)
    for t in (0, len(traj["actions"]) - 1):
        a = window_at(tiny_dataset, 1, t, 4, 1.0, 7, 100)
        b = window_at(ds, 0, t, 4, 1.0, 7, 100, rtg_override=traj["target_rtg"])
        assert torch.allclose(a.rtg, b.rtg, atol=1e-6) and torch.equal(a.obs, b.obs)


def test_choose_model_keeps_the_current_one_on_a_bad_path(tmp_path):
    r = choose_model(ids.MODEL_LOAD_BUTTON, MODEL, "/no/such/dir", MODEL)
    assert r["key"] == MODEL and "/no/such/dir" in r["message"]
    r = choose_model(ids.MODEL_LOAD_BUTTON, MODEL, "  ", MODEL)
    assert r["key"] == MODEL and "checkpoint directory" in r["message"]
    r = choose_model(ids.MODEL_DROPDOWN, "doorkey-6x6", "", MODEL)
    assert r["key"] == "doorkey-6x6" and r["message"] == "" and "parameters" in str(r["info"])
    r = choose_model(ids.MODEL_LOAD_BUTTON, MODEL, "doorkey-6x6", MODEL)  # a shipped name typed in
    assert (r["key"], r["dropdown"], r["path"]) == ("doorkey-6x6", "doorkey-6x6", "")
    ckpt = shutil.copytree(model_entry("dynamic-obstacles-8x8").path, tmp_path / "my-run")
    r = choose_model(ids.MODEL_LOAD_BUTTON, MODEL, str(ckpt), MODEL)
    assert (r["key"], r["dropdown"], r["path"]) == (str(ckpt.resolve()), None, str(ckpt.resolve()))
    assert model_entry(r["key"]).spec.env_id == "MiniGrid-Dynamic-Obstacles-8x8-v0"


def test_each_page_load_gets_its_own_session():
    def session_id(page):
        return next(c.data for c in page.children if getattr(c, "id", None) == ids.SESSION_STORE)

    assert session_id(layout(MODEL)) != session_id(layout(MODEL))


def test_forked_worker_gets_released_locks():
    """A lock held by a server thread at fork time must not stay held in a background worker."""
    entry = model_entry(default_model_key())
    with entry.lock, MODELS._load_lock:
        pid = os.fork()
        if pid == 0:  # the child: every cache lock must be free
            ok = entry.lock.acquire(timeout=5) and MODELS._load_lock.acquire(timeout=5)
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
