"""App state without a browser: episodes in the browser, windows, play logic, LRUs and session isolation.

The callbacks are thin wrappers of the functions tested here (``play_event``, ``play_view``,
``history_view``, ``choose_model``), so these tests exercise what a click does.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import threading

import numpy as np
import pytest
import torch

from dash_app import ids
from dash_app.cache import CONTEXTS, ENVS, LRU, MODELS, EnvCache, default_model_key, model_entry
from dash_app.history import history_view
from dash_app.layout import choose_model, layout
from dash_app.play import dt_run_to_end, dt_step, play_event, play_view, reset_episode, take_action
from dash_app.widgets import window_tokens
from dtinterp.data.dataset import load_dataset, save_dataset
from dtinterp.data.episode import Episode
from dtinterp.errors import EpisodeError
from dtinterp.model.inputs import token_labels
from dtinterp.play.rollout import play_episode, rollout
from envs.encoding import ACTION_NAMES, compact_obs
from envs.replay import ReplayMismatch
from envs.spec import make_env

MODEL = "memory-s7"
LEFT, RIGHT, FORWARD = 0, 1, 2


@pytest.fixture(scope="module")
def entry():
    return model_entry(MODEL)


def _no_hooks(entry) -> bool:
    return all(not hp.fwd_hooks and not hp.bwd_hooks for hp in entry.model.hook_points())


def _played(entry, session: str, seed: int, actions: list[int], target: float = 1.0) -> Episode:
    episode = reset_episode(session, entry, seed, target)
    for a in actions:
        episode = take_action(session, episode, a)
    return episode


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


def test_played_episode_equals_direct_env_replay(entry):
    actions = [FORWARD, LEFT, FORWARD, FORWARD, RIGHT, 3, 5]
    episode, msg = play_event(None, "s-replay", MODEL, None, "7", "0.5")
    assert msg == "" and episode.seed == 7 and episode.target_return == 0.5 and episode.source == "play"
    for a in actions:
        data = json.loads(json.dumps(episode.to_json()))  # each event starts from what the browser holds
        episode, msg = play_event(
            ids.PLAY_ACTION_BUTTONS[a], "s-replay", MODEL, Episode.from_json(data), "7", "0.5"
        )
        assert msg == ""
    grids, dirs, rewards = _env_replay(entry.checkpoint.env_spec, 7, actions)
    assert np.array_equal(episode.obs, grids)
    assert episode.directions.tolist() == dirs and episode.rewards.tolist() == rewards
    assert episode.actions.tolist() == actions


def test_a_play_step_decodes_and_validates_the_episode_once(entry, monkeypatch):
    """One play step (event + view, the Play tab's one callback) decodes and checks the episode once."""
    from dash_app import inputs as app_inputs

    episode = _played(entry, "s-once", 3, [FORWARD])
    data = json.loads(json.dumps(episode.to_json()))
    decodes, checks = [], []
    original_from_json, original_validate = Episode.from_json.__func__, Episode._validate
    monkeypatch.setattr(
        Episode, "from_json", classmethod(lambda cls, d: (decodes.append(1), original_from_json(cls, d))[1])
    )
    monkeypatch.setattr(Episode, "_validate", lambda self: (checks.append(1), original_validate(self))[1])
    loaded = app_inputs.load_episode(data)
    new, msg = play_event(ids.PLAY_DT_STEP, "s-once", MODEL, loaded, "3", "1")
    view = play_view("s-once", entry, new)
    assert msg == "" and view["message"] == "" and new.length == 2
    assert len(decodes) == 1 and len(checks) == 1


def test_episode_file_round_trip_and_load_validation(entry, tmp_path):
    episode = dt_run_to_end("s-round", entry, reset_episode("s-round", entry, 3, 1.0))
    assert episode.done
    path = tmp_path / "episode.npz"
    save_dataset(episode.to_dataset(), path)
    loaded = load_dataset(path)
    assert loaded.n_episodes == 1 and loaded.n_transitions == episode.length
    back = Episode.from_dataset(loaded, 0, source="play")
    assert back.seed == 3 and back.target_return == 1.0  # seed recovered (and verified by replay), target
    for name in ("obs", "directions", "actions", "rewards"):
        assert np.array_equal(getattr(back, name), getattr(episode, name)), name
    for name in ("obs", "directions", "actions", "timesteps", "pad_mask", "rtg"):
        assert torch.equal(
            getattr(back.windows(entry.checkpoint), name), getattr(episode.windows(entry.checkpoint), name)
        )


def test_live_episode_has_no_dataset_steps_yet(entry):
    episode = reset_episode("s-empty", entry, 0, 1.0)
    with pytest.raises(EpisodeError, match="no steps"):
        episode.to_dataset()


def test_dt_run_to_end_is_the_rollout(entry):
    """The app's DT play is the library's greedy rollout: same actions, rewards and model inputs."""
    seen = []
    (ref,) = rollout(
        entry.checkpoint, 1.0, [11], num_envs=1, record=True, progress=False,
        inspect=lambda _e, _t, inputs: seen.append(inputs.clone()),
    )  # fmt: skip
    episode = dt_run_to_end("s-rollout", entry, reset_episode("s-rollout", entry, 11, 1.0))
    assert episode.actions.tolist() == ref.episode.actions.tolist()
    assert np.allclose(episode.rewards, ref.episode.rewards)
    assert episode.done and episode.terminated == ref.episode.terminated
    # The live window at each step (pad action last) is exactly the batch the rollout fed the model.
    for t in range(episode.length):
        live = Episode(
            env_spec=episode.env_spec, obs=episode.obs[: t + 1], directions=episode.directions[: t + 1],
            actions=episode.actions[:t], rewards=episode.rewards[:t], seed=11, target_return=1.0, source="play",
        )  # fmt: skip
        win = live.window(entry.checkpoint, t)
        for name in ("obs", "directions", "actions", "timesteps", "pad_mask", "rtg"):
            assert torch.equal(getattr(win, name), getattr(seen[t], name)), (t, name)
    assert play_episode(entry.checkpoint, 1.0, 11).actions.tolist() == episode.actions.tolist()


def test_action_probs_are_softmax_of_window_logits(entry):
    episode = _played(entry, "s-probs", 5, [FORWARD, FORWARD, LEFT, FORWARD])
    probs = entry.action_probs(episode)
    for t in range(episode.n_obs):
        with torch.no_grad():
            expected = torch.softmax(entry.model(episode.window(entry.checkpoint, t))[0, -1], -1).numpy()
        assert np.allclose(probs[t], expected, atol=1e-6)
    # The Play tab's chart shows the distribution at the current (live) state.
    view = play_view("s-probs", entry, episode)
    assert view["message"] == ""
    assert np.allclose(view["probs"], probs[-1]) and np.isclose(view["probs"].sum(), 1.0)


def test_dt_step_takes_the_argmax(entry):
    episode = reset_episode("s-argmax", entry, 2, 1.0)
    best = int(np.argmax(entry.action_probs(episode)[-1]))
    assert dt_step("s-argmax", entry, episode).actions.tolist() == [best]


def test_no_hooks_left_after_play_history_and_analysis_context(entry):
    episode, _ = play_event(None, "s-hooks", MODEL, None, "1", "1")
    for event in (ids.PLAY_DT_STEP, ids.PLAY_ACTION_BUTTONS[FORWARD], ids.PLAY_DT_RUN):
        episode, _ = play_event(event, "s-hooks", MODEL, episode, "1", "1")
    play_view("s-hooks", entry, episode)
    history_view("s-hooks", entry, episode, 1)
    ctx = CONTEXTS.get(entry, episode.window(entry.checkpoint, 1))
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
    episode = reset_episode("s-bound", entry, 0, 1.0)
    for s in ("a", "b", "c"):
        cache.checkin(s, episode, make_env(entry.checkpoint.env_spec))
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
    for episode, session in ((a, "session-a"), (b, "session-b")):
        grids, _, _ = _env_replay(entry.checkpoint.env_spec, 4, episode.actions.tolist())
        assert np.array_equal(episode.obs, grids), session
    # Same seed and length but different actions never share an env, even within one session.
    c = _played(entry, "session-a", 4, [LEFT, FORWARD, FORWARD, FORWARD])
    assert c.actions.tolist() != a.actions.tolist() and not np.array_equal(c.obs, a.obs)


def test_env_cache_miss_resimulates_and_checks_the_episode(entry):
    episode = _played(entry, "s-owner", 6, [FORWARD, FORWARD, RIGHT])
    moved = take_action("s-stranger", episode, FORWARD)  # nothing cached for this session: re-simulated
    grids, _, _ = _env_replay(entry.checkpoint.env_spec, 6, moved.actions.tolist())
    assert np.array_equal(moved.obs, grids)
    obs = episode.obs.copy()
    obs[-1, 3, 3, 0] = (obs[-1, 3, 3, 0] + 1) % 11
    forged = Episode.from_json({**episode.to_json(), "obs_b64": base64.b64encode(obs.tobytes()).decode()})
    with pytest.raises(ReplayMismatch, match="does not replay from seed 6: step 3"):
        take_action("s-forger", forged, FORWARD)


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
    episode, msg = play_event(ids.PLAY_RESET, "s-inputs", MODEL, None, seed, target)
    assert episode is None and match in msg


def test_play_after_episode_end_and_bad_model_show_messages(entry):
    episode = dt_run_to_end("s-over", entry, reset_episode("s-over", entry, 0, 1.0))
    new, msg = play_event(ids.PLAY_ACTION_BUTTONS[FORWARD], "s-over", MODEL, episode, "0", "1")
    assert new is None and "over" in msg
    new, msg = play_event(ids.PLAY_RESET, "s-over", "/no/such/checkpoint", episode, "0", "1")
    assert new is None and "/no/such/checkpoint" in msg


def test_target_edit_reconditions_only_a_fresh_episode(entry):
    episode = reset_episode("s-target", entry, 0, 1.0)
    new, msg = play_event(ids.PLAY_TARGET_RTG, "s-target", MODEL, episode, "0", "0.25")
    assert msg == "" and new.target_return == 0.25 and np.array_equal(new.obs, episode.obs)
    moved = take_action("s-target", episode, FORWARD)
    new, msg = play_event(ids.PLAY_TARGET_RTG, "s-target", MODEL, moved, "0", "0.25")
    assert new is None and "next reset" in msg


def test_history_tokens_describe_the_window(entry):
    episode = _played(entry, "s-hist", 0, [FORWARD, LEFT, FORWARD])
    view = history_view("s-hist", entry, episode, 2)
    assert view["message"] == "" and view["world"].startswith("data:image/png;base64,")
    toks = view["tokens"]
    k = entry.model.cfg.context_len
    assert [t["label"] for t in toks] == token_labels(k)
    real = [t for t in toks if not t["pad"]]
    # Steps 0..2 are in the window: R, S, A for steps 0 and 1, then R, S of step 2.
    assert [t["value"] for t in real] == [
        f"{episode.rtg(0):.3f}",
        "obs@0",
        "forward",
        f"{episode.rtg(1):.3f}",
        "obs@1",
        "left",
        f"{episode.rtg(2):.3f}",
        "obs@2",
    ]
    assert window_tokens(episode.window(entry.checkpoint, 2), entry.checkpoint.rtg_scale) == toks
    assert ACTION_NAMES[int(episode.actions[2])] in dict(view["info"])["action"]


def test_history_without_seed_shows_pov_only(entry, tiny_dataset):
    episode = _played(entry, "s-noseed", 0, [FORWARD, LEFT])
    episode.seed = None
    view = history_view("s-noseed", entry, episode, 1)
    assert view["world"] is None and view["pov"] and "seed" in view["note"] and view["message"] == ""
    assert len(view["tokens"]) == len(token_labels(entry.model.cfg.context_len))
    # An episode from another env is shown (its view), and its window refused with a message.
    other = Episode.from_dataset(tiny_dataset, 0)
    view = history_view("s-noseed", entry, other, 0)
    assert (
        view["pov"] and view["world"] and "model memory-s7 plays" in view["message"] and view["tokens"] == []
    )


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
    assert model_entry(r["key"]).checkpoint.env_spec.env_id == "MiniGrid-Dynamic-Obstacles-8x8-v0"


def test_each_page_load_gets_its_own_session():
    def session_id(page):
        return next(c.data for c in page.children if getattr(c, "id", None) == ids.SESSION_STORE)

    assert session_id(layout(MODEL)) != session_id(layout(MODEL))


def test_forked_worker_gets_released_locks():
    """A lock held by a server thread at fork time must not stay held in a background worker: the
    caches' and the plugin registry's (tqdm's: tests/app/test_jobs.py)."""
    from dtinterp.plugins import registry

    entry = model_entry(default_model_key())
    held, release = threading.Event(), threading.Event()

    def server_thread() -> None:
        with entry.lock, MODELS._load_lock, registry._default_lock:
            held.set()
            release.wait(30)

    thread = threading.Thread(target=server_thread)
    thread.start()
    try:
        assert held.wait(10)
        pid = os.fork()
        if pid == 0:  # the child: every lock must be free
            signal.alarm(10)  # a lock that blocks ends the child with SIGALRM
            ok = entry.lock.acquire(timeout=5) and MODELS._load_lock.acquire(timeout=5)
            ok = ok and registry._default_lock.acquire(timeout=5)
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
    finally:
        release.set()
        thread.join()
    assert os.waitstatus_to_exitcode(status) == 0


def test_dt_plays_with_the_typed_intervention_and_records_it(entry):
    episode, msg = play_event(None, "s-int", MODEL, None, "4", "1")
    plain = play_view("s-int", entry, episode)["probs"]
    line = (
        "zero: blocks.0.hook_attn_out, blocks.1.hook_attn_out, blocks.0.hook_mlp_out, blocks.1.hook_mlp_out"
    )
    from dash_app.play import parse_play_intervention

    how = parse_play_intervention(line, entry, episode)
    shown = play_view("s-int", entry, episode, how)
    assert shown["message"] == "" and not np.allclose(shown["probs"], plain) and line in shown["chart_title"]
    moved, msg = play_event(ids.PLAY_DT_STEP, "s-int", MODEL, episode, "4", "1", line)
    assert msg == "" and moved.actions.tolist() == [int(np.argmax(shown["probs"]))]
    assert moved.info["interventions"] == [{"from_step": 0, "text": line}]
    assert _no_hooks(entry)
    same, msg = play_event(
        ids.PLAY_DT_STEP, "s-int", MODEL, episode, "4", "1", "zero: blocks.7.hook_attn_out"
    )
    assert same is None and "blocks.7" in msg
