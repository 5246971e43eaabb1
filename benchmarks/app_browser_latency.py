"""Benchmark: what a user of the app waits for, measured in headless Chromium with in-page timestamps.

Starts ``dtinterp app`` (production server, ``--workers``; 0 = the development server) on a free port and
opens it in headless Chromium. A script installed before the page loads timestamps, with
``performance.now()``:

- every key press and click (capture phase, before the app sees it);
- every change of the Play tab's world frame, when its new image has decoded and the next animation
  frame has been painted ("frame painted");
- every change of the action-probability chart (an SVG image), when it has decoded and the next animation
  frame has been painted ("chart updated");
- every callback request (``fetch`` of ``/_dash-update-component``): when the last one in flight returns
  ("last callback done") and how many a step sends.

Measured: page load to the first world frame (once on a cold browser cache, then five times warm); a key
press to its frame painted and to the last callback; a "DT step" click to the chart updated and to the
last callback. Medians and p95 over ``--steps`` steps of each kind, twice: with only the Play tab built
(a tab's panel is built the first time it is opened), then after every tab has been opened once. Targets (one session, 2 cores): key -> frame p95 < 150 ms, every panel of the visible tab
updated p95 < 250 ms, page load < 1.5 s. Asserts nothing; run by hand:
``python benchmarks/app_browser_latency.py [--steps 60] [--workers 2]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.app_latency import start_server  # noqa: E402
from dash_app import ids  # noqa: E402
from dash_app.layout import TABS  # noqa: E402
from tests.app.harness import make_driver  # noqa: E402
from tests.app.pages import select_tab  # noqa: E402

PROBE = """
(function () {
  const T = (window.__probe = {events: [], frames: [], charts: [], inflight: 0, requests: 0, lastDone: 0});
  const now = () => performance.now();
  for (const kind of ["keydown", "click"]) {
    document.addEventListener(kind, (e) => T.events.push([kind, now()]), true);
  }
  const fetch0 = window.fetch;
  window.fetch = function (url, opts) {
    const cb = String(url).includes("_dash-update-component");
    if (cb) { T.inflight++; T.requests++; }
    return fetch0.apply(this, arguments).finally(() => {
      if (cb) { T.inflight--; T.lastDone = now(); }
    });
  };
  const watch = () => {
    const img = document.getElementById("__WORLD__");
    const chart = document.getElementById("__CHART__");
    if (!img || !chart) { return setTimeout(watch, 20); }
    new MutationObserver(() => {
      img.decode().catch(() => {}).then(() => requestAnimationFrame(() => T.frames.push(now())));
    }).observe(img, {attributes: true, attributeFilter: ["src"]});
    // the chart is an SVG image: updated once its new source has decoded and the next frame is painted
    new MutationObserver(() => {
      chart.decode().catch(() => {}).then(() => requestAnimationFrame(() => T.charts.push(now())));
    }).observe(chart, {attributes: true, attributeFilter: ["src"]});
    T.frames.push(now());  // the first frame is already there
  };
  document.addEventListener("DOMContentLoaded", watch);
})();
""".replace("__WORLD__", ids.PLAY_WORLD_IMG).replace("__CHART__", ids.PLAY_PROBS_GRAPH)


def pct(xs: list[float]) -> str:
    if not xs:
        return "n=0"
    s = sorted(xs)
    p95 = s[min(len(s) - 1, round(0.95 * (len(s) - 1)))]
    return f"n={len(s):3d}  p50 {statistics.median(s):6.0f} ms  p95 {p95:6.0f} ms  max {s[-1]:6.0f} ms"


def settle(driver, quiet_ms: float = 150.0, timeout: float = 10.0) -> dict:
    """Wait until no callback is in flight for ``quiet_ms``; return the probe's state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t = driver.execute_script("return window.__probe")
        if (
            t["inflight"] == 0
            and driver.execute_script("return performance.now()") - t["lastDone"] > quiet_ms
        ):
            return t
        time.sleep(0.02)
    raise SystemExit("the page never settled")


def steps(driver, n: int) -> dict[str, list[float]]:
    """``n`` key presses then ``n`` "DT step" clicks on the Play tab, each timed (see the module doc)."""
    body = driver.find_element("tag name", "body")
    out: dict[str, list[float]] = {
        k: [] for k in ("key_frame", "key_done", "key_req", "dt_chart", "dt_done", "dt_req")
    }
    keys = ["\ue012", "\ue014", "\ue013"]  # left, right, up (turns and forward)
    for i in range(n):
        t = settle(driver)
        n_ev, n_fr, n_req = len(t["events"]), len(t["frames"]), t["requests"]
        body.send_keys(keys[i % 3] if i % 7 else "\ue013")
        t = settle(driver)
        if len(t["frames"]) > n_fr and len(t["events"]) > n_ev:
            start = t["events"][n_ev][1]
            out["key_frame"].append(t["frames"][-1] - start)
            out["key_done"].append(t["lastDone"] - start)
            out["key_req"].append(t["requests"] - n_req)
        if "Episode over" in driver.find_element("id", ids.PLAY_BANNER).text:
            driver.find_element("id", ids.PLAY_RESET).click()
            settle(driver)
    for _ in range(n):
        t = settle(driver)
        if "Episode over" in driver.find_element("id", ids.PLAY_BANNER).text:
            driver.find_element("id", ids.PLAY_RESET).click()
            t = settle(driver)
        n_ev, n_ch, n_req = len(t["events"]), len(t["charts"]), t["requests"]
        driver.find_element("id", ids.PLAY_DT_STEP).click()
        t = settle(driver)
        if len(t["charts"]) > n_ch and len(t["events"]) > n_ev:
            start = t["events"][n_ev][1]
            out["dt_chart"].append(t["charts"][-1] - start)
            out["dt_done"].append(t["lastDone"] - start)
            out["dt_req"].append(t["requests"] - n_req)
    return out


def report(title: str, r: dict[str, list[float]]) -> None:
    print(f"-- {title}")
    print(f"key press -> world frame painted: {pct(r['key_frame'])}   (target p95 < 150 ms)")
    print(f"key press -> last callback done:  {pct(r['key_done'])}   (target p95 < 250 ms)")
    print(f"DT step click -> chart updated:   {pct(r['dt_chart'])}")
    print(f"DT step click -> last callback:   {pct(r['dt_done'])}   (target p95 < 250 ms)")
    if r["key_req"] and r["dt_req"]:
        print(f"callback requests per step: key {statistics.mean(r['key_req']):.1f}, "
              f"DT step {statistics.mean(r['dt_req']):.1f}")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60, help="timed steps of each kind")
    p.add_argument("--workers", type=int, default=None, help="server processes (default: one per core)")
    p.add_argument("--model", default=None)
    args = p.parse_args()

    proc, url = start_server(args.model, workers=args.workers)
    driver = make_driver(tempfile.mkdtemp(prefix="dtinterp-bench-chrome-"))
    try:
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": PROBE})
        loads = []
        for _ in range(
            6
        ):  # page load -> first frame: the first on a cold cache, then 5 (fresh session storage)
            driver.get(url + "_favicon.ico")
            driver.execute_script("sessionStorage.clear()")
            driver.get(url)
            t0 = time.monotonic()
            while time.monotonic() - t0 < 30:
                found = driver.find_elements("id", ids.PLAY_WORLD_IMG)  # the page renders asynchronously
                if found and (found[0].get_attribute("src") or "").startswith("data:image/png"):
                    break
                time.sleep(0.01)
            settle(driver)
            loads.append(driver.execute_script(
                "const n = performance.getEntriesByType('navigation')[0];"
                "return window.__probe.frames.length ? window.__probe.frames[window.__probe.frames.length-1] - n.startTime : null"
            ))  # fmt: skip
        workers = "dev server" if args.workers == 0 else f"{args.workers or 'one per core'} worker(s)"
        print(f"app at {url} ({workers}), headless Chromium, in-page timestamps")
        print(f"page load -> first world frame, cold cache: {loads[0]:6.0f} ms   (target < 1500 ms)")
        print(f"page load -> first world frame, warm cache: {pct(loads[1:])}   (target < 1500 ms)")
        report("Play tab only (the other tabs never opened)", steps(driver, args.steps))
        for tab, *_ in TABS[1:]:  # every other tab built and left in the page, then back to playing
            select_tab(driver, tab)
            settle(driver, timeout=60)
        select_tab(driver, ids.TAB_PLAY)
        settle(driver)
        report("after every tab has been opened once", steps(driver, args.steps))
    finally:
        driver.quit()
        proc.terminate()
        proc.wait(timeout=20)


if __name__ == "__main__":
    main()
