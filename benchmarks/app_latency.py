"""Benchmark: how fast the web app answers a play step, alone and with concurrent users, and its memory.

Starts ``dtinterp app`` in a subprocess on a free loopback port and drives it over HTTP the way the
browser's Dash renderer does, without a browser: the page layout comes from ``/_dash-layout`` (one
fresh session id per simulated tab), the callback graph from ``/_dash-dependencies``, and each click
becomes ``POST /_dash-update-component`` requests. A step is timed from the click to the last callback
it sets off (the renderer's rules: a callback waits while another pending one may still change its
inputs; independent callbacks run concurrently, like the browser's parallel requests), i.e. until every
panel of every tab shows the new state. Clientside callbacks (tab switching) run in the browser and are
not part of it.

1. One session: ``--steps`` DT steps ("DT step" button; a new seed is reset when an episode ends) and
   ``--steps`` human steps (random left/right/forward buttons, as the keyboard does); p50/p95/max.
2. ``--sessions`` concurrent sessions (one thread each, their own session ids) mixing both kinds of
   step for ``--duration`` seconds: requests, errors (HTTP failures and messages shown on the Play tab),
   step latency under load, and the server's resident memory (with any child processes) sampled over
   the run, to show it stays bounded (the app's envs, models and contexts live in bounded LRUs).

Run by hand: ``python benchmarks/app_latency.py [--model memory-s7] [--duration 60]`` (asserts nothing;
the target is p95 < 300 ms for a single session on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import psutil
import requests

from dash_app import ids

HUMAN_ACTIONS = ("left", "right", "forward")


# ------------------------------------------------------------------ the callback graph


def id_key(component_id: Any) -> str:
    """Dash's string form of a component id (dict ids as sorted compact JSON)."""
    if isinstance(component_id, dict):
        return json.dumps(component_id, sort_keys=True, separators=(",", ":"))
    return str(component_id)


def is_wildcard(component_id: Any) -> bool:
    return isinstance(component_id, dict) and any(isinstance(v, list) for v in component_id.values())


def matches(pattern: dict, component_id: Any) -> bool:
    """Whether a concrete dict id matches a pattern id (``ALL`` wildcards only)."""
    if not isinstance(component_id, dict) or set(pattern) != set(component_id):
        return False
    return all(v == ["ALL"] or v == component_id[k] for k, v in pattern.items())


@dataclass
class Callback:
    """One server callback of the app, as ``/_dash-dependencies`` describes it."""

    output: str
    outputs: list[tuple[Any, str]]
    multi: bool
    inputs: list[dict[str, Any]]
    state: list[dict[str, Any]]
    prevent_initial: bool
    clientside: bool
    background: bool

    @classmethod
    def parse(cls, dep: dict[str, Any]) -> Callback:
        out = dep["output"]
        multi = out.startswith("..") and out.endswith("..")
        parts = out[2:-2].split("...") if multi else [out]
        outputs = []
        for part in parts:
            cid, prop = part.rsplit(".", 1)
            outputs.append((json.loads(cid) if cid.startswith("{") else cid, prop.split("@")[0]))
        return cls(
            output=out,
            outputs=outputs,
            multi=multi,
            inputs=dep["inputs"],
            state=dep.get("state", []),
            prevent_initial=bool(dep.get("prevent_initial_call")),
            clientside=dep.get("clientside_function") is not None,
            background=bool(dep.get("background")),
        )

    def output_keys(self) -> set[tuple[str, str]]:
        return {(id_key(i), p) for i, p in self.outputs if not is_wildcard(i)}

    def triggered_by(self, component_id: Any, prop: str) -> bool:
        for spec in self.inputs:
            if spec["property"] != prop:
                continue
            if is_wildcard(spec["id"]) and matches(spec["id"], component_id):
                return True
            if not is_wildcard(spec["id"]) and id_key(spec["id"]) == id_key(component_id):
                return True
        return False


# ------------------------------------------------------------------ one simulated browser tab


class StepError(RuntimeError):
    """A callback request failed (HTTP error or connection problem)."""


def _walk_components(value: Any) -> Iterator[dict[str, Any]]:
    """Every Dash component (``{"type", "namespace", "props"}``) inside a layout or callback value."""
    if isinstance(value, dict):
        if "props" in value and "type" in value:
            yield value
            yield from _walk_components(value["props"].get("children"))
        else:
            for v in value.values():
                yield from _walk_components(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk_components(v)


class Tab:
    """The renderer's state for one browser tab: component props and the callback chain rules."""

    def __init__(self, url: str, callbacks: list[Callback], workers: int = 4) -> None:
        self.url = url
        self.callbacks = callbacks
        self.props: dict[str, dict[str, Any]] = {}
        self.ids: dict[str, Any] = {}
        self.requests = 0
        #: seconds of each callback request, by the callback's first output
        self.timings: dict[str, list[float]] = {}
        self._pool = ThreadPoolExecutor(max_workers=workers)
        self._local = threading.local()

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def _http(self) -> requests.Session:
        if not hasattr(self._local, "s"):
            self._local.s = requests.Session()
        return self._local.s

    def _register(self, value: Any) -> None:
        for comp in _walk_components(value):
            cid = comp["props"].get("id")
            if cid is not None:
                key = id_key(cid)
                self.ids[key] = cid
                self.props[key] = dict(comp["props"])

    def get(self, component_id: Any, prop: str) -> Any:
        return self.props.get(id_key(component_id), {}).get(prop)

    def load(self) -> float:
        """Load the page (a new session) and run its initial callbacks; returns the seconds taken."""
        t0 = time.perf_counter()
        r = self._http().get(self.url + "_dash-layout", timeout=60)
        self.requests += 1
        if r.status_code != 200:
            raise StepError(f"GET /_dash-layout: HTTP {r.status_code}")
        self._register(r.json())
        initial = {
            i: set()
            for i, cb in enumerate(self.callbacks)
            if not cb.clientside and not cb.prevent_initial and self._present(cb)
        }
        self._run(initial)
        return time.perf_counter() - t0

    def _present(self, cb: Callback) -> bool:
        return all(is_wildcard(s["id"]) or id_key(s["id"]) in self.props for s in cb.inputs)

    def click(self, component_id: str, **states: Any) -> float:
        """Click a button (after setting ``states``: ``{component id: value}``); seconds until all updated."""
        for cid, value in states.items():
            self.props.setdefault(cid, {})["value"] = value
        t0 = time.perf_counter()
        n = (self.get(component_id, "n_clicks") or 0) + 1
        self._set(component_id, "n_clicks", n)
        pending = {i: {f"{component_id}.n_clicks"} for i in self._triggered(component_id, "n_clicks")}
        self._run(pending)
        return time.perf_counter() - t0

    def _set(self, component_id: Any, prop: str, value: Any) -> None:
        key = id_key(component_id)
        self.ids.setdefault(key, component_id)
        self.props.setdefault(key, {})[prop] = value

    def _triggered(self, component_id: Any, prop: str) -> list[int]:
        return [
            i
            for i, cb in enumerate(self.callbacks)
            if not cb.clientside and cb.triggered_by(component_id, prop)
        ]

    def _may_change(self, active: set[int]) -> set[tuple[str, str]]:
        """Every prop that the ``active`` callbacks, or callbacks they set off, may still change."""
        props: set[tuple[str, str]] = set()
        frontier = set(active)
        seen: set[int] = set()
        while frontier:
            i = frontier.pop()
            seen.add(i)
            new = self.callbacks[i].output_keys() - props
            props |= new
            for key, prop in new:
                for j in self._triggered(self.ids.get(key, key), prop):
                    if j not in seen:
                        frontier.add(j)
        return props

    def _run(self, pending: dict[int, set[str]]) -> None:
        """Run callbacks until nothing is pending, as the renderer orders them.

        Requests are built here (the only thread that touches ``props``) and sent from the pool.
        """
        running: dict[Future, int] = {}
        while pending or running:
            ready = []
            for i in pending:
                others = (set(pending) | set(running.values())) - {i}
                blocked = self._may_change(others)
                if not any((id_key(s["id"]), s["property"]) in blocked for s in self.callbacks[i].inputs):
                    ready.append(i)
            if not ready and not running:  # a cycle: run them all rather than wait forever
                ready = list(pending)
            for i in ready:
                changed = sorted(pending.pop(i))
                if self.callbacks[i].background:
                    continue  # a long analysis run is not part of a step
                body = self._body(self.callbacks[i], changed)
                running[self._pool.submit(self._post, self.callbacks[i], body)] = i
                self.requests += 1
            if not running:
                continue
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in done:
                i = running.pop(fut)
                cb = self.callbacks[i]
                seconds, updates = fut.result()
                cid, prop = cb.outputs[0]
                self.timings.setdefault(f"{id_key(cid)}.{prop}", []).append(seconds)
                for cid, prop, value in updates:
                    self._set(cid, prop, value)
                    self._register(value)
                    for j in self._triggered(cid, prop):
                        if j != i:  # a callback's own outputs never set it off again (Dash's circular rule)
                            pending.setdefault(j, set()).add(f"{id_key(cid)}.{prop}")

    def _spec(self, spec: dict[str, Any]) -> Any:
        if is_wildcard(spec["id"]):
            return [
                {"id": cid, "property": spec["property"], "value": self.get(cid, spec["property"])}
                for cid in self.ids.values()
                if matches(spec["id"], cid)
            ]
        return {
            "id": spec["id"],
            "property": spec["property"],
            "value": self.get(spec["id"], spec["property"]),
        }

    def _body(self, cb: Callback, changed: list[str]) -> dict[str, Any]:
        """The JSON body of ``POST /_dash-update-component`` for one callback, from the current props."""
        outputs = [{"id": cid, "property": prop} for cid, prop in cb.outputs]
        return {
            "output": cb.output,
            "outputs": outputs if cb.multi else outputs[0],
            "inputs": [self._spec(s) for s in cb.inputs],
            "state": [self._spec(s) for s in cb.state],
            "changedPropIds": changed,
        }

    def _post(self, cb: Callback, body: dict[str, Any]) -> tuple[float, list[tuple[Any, str, Any]]]:
        """Send one callback request; ``(seconds, [(component id, prop, new value)])``."""
        t0 = time.perf_counter()
        try:
            r = self._http().post(self.url + "_dash-update-component", json=body, timeout=60)
        except requests.RequestException as exc:
            raise StepError(f"{cb.output}: {exc}") from None
        if r.status_code == 204:  # PreventUpdate / nothing to update
            return time.perf_counter() - t0, []
        if r.status_code != 200:
            raise StepError(f"{cb.output}: HTTP {r.status_code}: {r.text[:200]}")
        response = r.json().get("response", {})
        updates = [
            (self.ids.get(key, key), prop, v) for key, props in response.items() for prop, v in props.items()
        ]
        return time.perf_counter() - t0, updates


# ------------------------------------------------------------------ play sessions


@dataclass
class Player:
    """A user on the Play tab: DT steps and/or random human steps, a new seed when an episode ends."""

    tab: Tab
    rng: random.Random
    seed: int
    dt_share: float
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"dt": [], "human": [], "reset": []})
    requests: dict[str, list[int]] = field(default_factory=lambda: {"dt": [], "human": [], "reset": []})
    app_errors: list[str] = field(default_factory=list)

    def over(self) -> bool:
        return bool(self.tab.get(ids.PLAY_DT_STEP, "disabled"))

    def step(self) -> None:
        n0 = self.tab.requests
        if self.over():
            self.seed += 1
            kind, seconds = "reset", self.tab.click(ids.PLAY_RESET, **{ids.PLAY_SEED: str(self.seed)})
        elif self.rng.random() < self.dt_share:
            kind, seconds = "dt", self.tab.click(ids.PLAY_DT_STEP)
        else:
            kind, seconds = "human", self.tab.click(ids.play_action_button(self.rng.choice(HUMAN_ACTIONS)))
        self.latencies[kind].append(seconds)
        self.requests[kind].append(self.tab.requests - n0)
        message = self.tab.get(ids.PLAY_MESSAGE, "children")
        if message:
            self.app_errors.append(str(message))


def percentiles(xs: list[float]) -> str:
    if not xs:
        return "n=0"
    ms = sorted(x * 1000 for x in xs)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return f"n={len(ms):4d}  p50 {statistics.median(ms):7.1f} ms  p95 {p95:7.1f} ms  max {ms[-1]:7.1f} ms"


# ------------------------------------------------------------------ the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    model: str | None, timeout: float = 120.0, workers: int | None = None
) -> tuple[subprocess.Popen, str]:
    """``dtinterp app`` on a free loopback port; returns the process and its URL once it answers.

    ``workers`` processes of the production server (default: one per core); 0 means the development
    server (``--dev``, one process).

    Its output (one access-log line per request) goes to a temporary file, never to an unread pipe,
    which would block the server once full.
    """
    port = free_port()
    cmd = [sys.executable, "-m", "dtinterp.cli", "app", "--host", "127.0.0.1", "--port", str(port)]
    if model:
        cmd += ["--model", model]
    if workers == 0:
        cmd += ["--dev"]
    elif workers is not None:
        cmd += ["--workers", str(workers)]
    log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - open as long as the server runs
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise SystemExit(f"the app exited with {proc.returncode}: {log.read().strip()[-2000:]}")
        try:
            if requests.get(url + "_dash-dependencies", timeout=2).status_code == 200:
                return proc, url
        except requests.RequestException:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"the app did not answer on {url} within {timeout:.0f} s")


def rss_mib(pid: int) -> float:
    """Resident memory of a process and all its children, MiB."""
    p = psutil.Process(pid)
    procs = [p, *p.children(recursive=True)]
    total = 0
    for q in procs:
        with contextlib.suppress(psutil.NoSuchProcess):  # a child that just exited
            total += q.memory_info().rss
    return total / 2**20


def server_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its children."""
    p = psutil.Process(pid)
    total = 0.0
    for q in [p, *p.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = q.cpu_times()
            total += t.user + t.system
    return total


# ------------------------------------------------------------------ main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model the app opens with (default: the app's, memory-s7)")
    p.add_argument(
        "--steps", type=int, default=100, help="timed steps of each kind in the single-session run"
    )
    p.add_argument("--sessions", type=int, default=8, help="concurrent sessions in the load run")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of the load run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--workers", type=int, default=None, help="server processes (default: one per core; 0: --dev)"
    )
    args = p.parse_args()

    t0 = time.perf_counter()
    proc, url = start_server(args.model, workers=args.workers)
    print(f"dtinterp app on {url} (pid {proc.pid}) answered after {time.perf_counter() - t0:.1f} s")
    try:
        deps = requests.get(url + "_dash-dependencies", timeout=10).json()
        callbacks = [Callback.parse(d) for d in deps]
        n_client = sum(cb.clientside for cb in callbacks)
        print(f"{len(callbacks)} callbacks ({n_client} clientside); CPU cores: {os.cpu_count()}")

        # 1. one session
        tab = Tab(url, callbacks)
        load_s = tab.load()
        warm = Player(tab, random.Random(args.seed), seed=args.seed, dt_share=0.5)
        for _ in range(10):
            warm.step()
        print(f"page load (layout + initial callbacks): {load_s * 1000:.0f} ms; warmed up with 10 steps")
        rss_start = rss_mib(proc.pid)
        tab.timings.clear()
        cpu_start = server_cpu(proc.pid)
        dt = Player(tab, random.Random(args.seed), seed=1000 + args.seed, dt_share=1.0)
        tab.click(ids.PLAY_RESET, **{ids.PLAY_SEED: str(dt.seed)})
        while len(dt.latencies["dt"]) < args.steps:
            dt.step()
        human = Player(tab, random.Random(args.seed + 1), seed=2000 + args.seed, dt_share=0.0)
        tab.click(ids.PLAY_RESET, **{ids.PLAY_SEED: str(human.seed)})
        while len(human.latencies["human"]) < args.steps:
            human.step()
        tab.close()
        cpu_single = server_cpu(proc.pid) - cpu_start
        n_single = sum(len(pl.latencies[k]) for pl in (dt, human) for k in pl.latencies)
        print("\nsingle session, click -> every panel updated (all chained callbacks):")
        print(f"  DT step     {percentiles(dt.latencies['dt'])}")
        print(f"  human step  {percentiles(human.latencies['human'])}")
        print(f"  reset       {percentiles(dt.latencies['reset'] + human.latencies['reset'])}")
        per_step = {k: statistics.mean(dt.requests[k] + human.requests[k]) for k in ("dt", "human")}
        print(f"  callback requests per step: DT {per_step['dt']:.1f}, human {per_step['human']:.1f}")
        print(f"  server CPU per step: {cpu_single / n_single * 1000:.0f} ms")
        print("  slowest callbacks (request round trip, named by their first output):")
        slow = sorted(tab.timings.items(), key=lambda kv: -statistics.median(kv[1]))[:4]
        for name, xs in slow:
            print(f"    {name:<28} {percentiles(xs)}")
        errors_single = dt.app_errors + human.app_errors

        # 2. concurrent sessions
        stop = time.monotonic() + args.duration
        players: list[Player] = []
        http_errors: list[str] = []
        lock = threading.Lock()

        def user(k: int) -> None:
            t = Tab(url, callbacks, workers=2)
            pl = Player(t, random.Random(args.seed + 100 + k), seed=10_000 * (k + 1), dt_share=0.5)
            with lock:
                players.append(pl)
            try:
                t.load()
                while time.monotonic() < stop:
                    pl.step()
            except StepError as exc:
                with lock:
                    http_errors.append(f"session {k}: {exc}")
            finally:
                t.close()

        samples = [(0.0, rss_mib(proc.pid))]
        cpu_load = server_cpu(proc.pid)
        threads = [threading.Thread(target=user, args=(k,)) for k in range(args.sessions)]
        t_load = time.monotonic()
        for th in threads:
            th.start()
        while any(th.is_alive() for th in threads):
            time.sleep(1.0)
            samples.append((time.monotonic() - t_load, rss_mib(proc.pid)))
        for th in threads:
            th.join()
        elapsed = time.monotonic() - t_load
        cpu_load = server_cpu(proc.pid) - cpu_load
        all_lat = {k: [x for pl in players for x in pl.latencies[k]] for k in ("dt", "human", "reset")}
        n_steps = sum(len(v) for v in all_lat.values())
        n_req = sum(pl.tab.requests for pl in players)
        app_errors = [e for pl in players for e in pl.app_errors]
        print(f"\n{args.sessions} concurrent sessions for {elapsed:.0f} s:")
        print(
            f"  steps {n_steps} ({n_steps / elapsed:.1f}/s), HTTP requests {n_req} ({n_req / elapsed:.1f}/s)"
        )
        print(
            f"  server CPU {cpu_load:.0f} s of {elapsed * (os.cpu_count() or 1):.0f} core-seconds "
            f"({cpu_load / max(1, n_steps) * 1000:.0f} ms per step; the clients use the rest)"
        )
        print(f"  errors: {len(http_errors)} HTTP, {len(app_errors)} shown on the Play tab")
        for e in (http_errors + app_errors)[:5]:
            print(f"    {e}")
        print(f"  DT step     {percentiles(all_lat['dt'])}")
        print(f"  human step  {percentiles(all_lat['human'])}")
        print(f"  reset       {percentiles(all_lat['reset'])}")
        peak = max(m for _, m in samples)
        every = max(1, len(samples) // 6)
        series = ", ".join(f"{t:.0f}s {m:.0f}" for t, m in samples[::every])
        print(f"\nserver RSS (MiB, with children): after warm-up {rss_start:.0f}; during load {series}")
        print(f"  before load {samples[0][1]:.0f}, peak {peak:.0f}, after {rss_mib(proc.pid):.0f}")
        if errors_single:
            print(f"single-session messages on the Play tab: {errors_single[:3]}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    main()
