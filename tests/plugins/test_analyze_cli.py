"""``dtinterp analyze``: the plugin list, a full run to HTML + JSON, and bad input refused with one line.

Subprocess runs see an extra third-party plugin through a ``*.dist-info`` directory on PYTHONPATH (how
an installed package registers an entry point), so they also prove that a plugin added that way shows
up in the CLI with no change to dtinterp. Error cases run ``dtinterp.cli.main`` in-process (the function
the ``dtinterp`` script calls) to keep the number of ~4 s interpreter starts low.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint

import pytest
import torch

from dtinterp.cli import main
from dtinterp.data.collect import collect
from dtinterp.data.dataset import load_dataset, save_dataset
from dtinterp.data.episode import Episode, dataset_windows
from dtinterp.interp.edits import apply_edits, parse_edit
from dtinterp.model.checkpoint import load_checkpoint, save_checkpoint
from dtinterp.plugins.api import AnalysisContext
from dtinterp.plugins.registry import ENTRY_POINT_GROUP, get_registry, load_registry
from envs import EnvSpec
from envs.encoding import OBJECT_NAMES

ENV = EnvSpec("MiniGrid-DoorKey-5x5-v0")

FAKE_PLUGIN = '''
"""A third-party test plugin: the last state's logits, clean and edited, as two figures."""
from dtinterp.plugins.api import Analysis, AnalysisResult, Param


class TwoFigures(Analysis):
    id = "fake-two-figures"
    title = "Fake: scaled logits"
    category = "causal"
    description = "Scaled logits of the last state <b>clean</b> & edited."
    parameters = (Param("scale", "float", 1.0, help="multiplies the logits", min=0.0, max=10.0),)

    def compute(self, ctx, params):
        data = {"logits": ctx.logits[:, -1] * params["scale"]}
        if ctx.counterfactual is not None:
            data["cf_logits"] = ctx.cf_logits[:, -1] * params["scale"]
        return AnalysisResult(self.id, params, data, summary="fake summary <ok>")

    def figures(self, result):
        import plotly.graph_objects as go

        return [
            go.Figure(go.Bar(y=result.data["logits"][0].tolist()), layout_title_text="clean logits"),
            go.Figure(go.Bar(y=result.data["cf_logits"][0].tolist()), layout_title_text="edited logits"),
        ]
'''

DIST_INFO = {
    "METADATA": "Metadata-Version: 2.1\nName: fake-dtinterp-plugins\nVersion: 0.1\n",
    "entry_points.txt": textwrap.dedent(
        """
        [dtinterp.analyses]
        fake-two-figures = fake_two_figures:TwoFigures
        fake-broken = fake_module_that_is_missing:Plugin
        """
    ),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_model, tiny_meta):
    root = tmp_path_factory.mktemp("analyze_cli")
    save_checkpoint(root / "model", tiny_model, tiny_meta)
    ds = collect(ENV, 3, "expert", seed=0, progress=False)
    save_dataset(ds, root / "data.npz")
    save_dataset(Episode.from_dataset(ds, 1).to_dataset(), root / "traj.npz")
    plugins = root / "site"
    (plugins / "fake_dtinterp_plugins-0.1.dist-info").mkdir(parents=True)
    for name, text in DIST_INFO.items():
        (plugins / "fake_dtinterp_plugins-0.1.dist-info" / name).write_text(text)
    (plugins / "fake_two_figures.py").write_text(FAKE_PLUGIN)
    return root


def run_cli(files, *args: str) -> subprocess.CompletedProcess:
    """``dtinterp *args`` in a fresh interpreter that then reports whether dash was imported."""
    code = (
        "import sys\nfrom dtinterp.cli import main\nrc = main(sys.argv[1:])\n"
        "if any(m.split('.')[0] in ('dash', 'dash_app') for m in sys.modules): sys.exit(99)\nsys.exit(rc)"
    )
    site = os.pathsep.join([str(files / "site"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": site, "OMP_NUM_THREADS": "1"}  # tiny forwards: threads only contend
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, env=env, cwd=files
    )


def test_list_shows_every_plugin_with_its_parameters_and_the_failures(files):
    res = run_cli(files, "analyze", "--list")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for plugin_id in [*get_registry().plugins, "fake-two-figures"]:
        assert f"  {plugin_id} " in out, plugin_id
    assert "Fake: scaled logits" in out
    assert "      --param scale=1.0  (float in [0, 10])\n          multiplies the logits\n" in out
    assert out.index("causal:") < out.index("fake-two-figures")
    failed = out[out.index("failed plugins (skipped):") :]
    assert "fake-broken (import): ModuleNotFoundError" in failed


def test_analyze_writes_a_standalone_report_and_the_result_json(files, tiny_model, tiny_meta):
    out, out_json = files / "report.html", files / "result.json"
    res = run_cli(
        files,
        *("analyze", str(files / "model"), "--analysis", "fake-two-figures"),
        *("--trajectory", "traj.npz", "--step", "2", "--edit", "R2=0.25", "--edit", "S3.direction=up"),
        *("--param", "scale=2.5", "--out", str(out), "--json", str(out_json)),
    )
    assert res.returncode == 0, res.stderr  # 99 would mean dash was imported
    assert "Traceback" not in res.stderr and "dtinterp analyze: running fake-two-figures" in res.stderr
    assert f"wrote {out}" in res.stdout and "fake summary <ok>" in res.stdout

    html = out.read_text()
    assert (
        html.count('id="figure-0"') == 1 and html.count('id="figure-1"') == 1 and 'id="figure-2"' not in html
    )
    assert html.count("plotly.js v") == 1  # the library inline, exactly once: the file works offline
    assert "<script src=" not in html
    for text in ("Fake: scaled logits", "clean logits", "edited logits", "multiplies the logits"):
        assert text in html
    assert "&lt;b&gt;clean&lt;/b&gt; &amp; edited" in html and "fake summary &lt;ok&gt;" in html  # escaped
    assert "R2=0.25" in html and "S3.direction=up" in html and "MiniGrid-DoorKey-5x5-v0" in html
    assert str((files / "model").resolve()) in html

    result = json.loads(out_json.read_text())
    assert result["plugin_id"] == "fake-two-figures" and result["params"] == {"scale": 2.5}
    # The numbers are the model's on exactly the window that ends at step 2 of the trajectory.
    ckpt = load_checkpoint(files / "model")
    model = ckpt.model
    window = Episode.from_dataset(load_dataset(files / "traj.npz"), 0).window(ckpt, 2)
    edited = apply_edits(window, [parse_edit("R2=0.25"), parse_edit("S3.direction=up")], 1.0)
    with torch.no_grad():
        expected = 2.5 * model(window)[:, -1]
        expected_cf = 2.5 * model(edited)[:, -1]
    torch.testing.assert_close(torch.tensor(result["data"]["logits"]), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(result["data"]["cf_logits"]), expected_cf, atol=1e-5, rtol=0)
    assert not torch.allclose(expected, expected_cf)
    assert sorted(p.name for p in files.iterdir() if p.name.startswith(".")) == []  # no temp files left


def test_a_builtin_analysis_on_dataset_windows(files, capsys):
    registry = get_registry()
    plugin_id = "residual-norms"
    out = files / "builtin.html"
    rc = main(
        ["analyze", str(files / "model"), "--analysis", plugin_id, "--data", str(files / "data.npz")]
        + ["--episodes", "2", "--max-windows", "6", "--out", str(out)]
    )
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "running residual-norms on 6 window(s) of 4 timesteps" in err
    # As many figure divs as the plugin makes on the same inputs.
    ckpt = load_checkpoint(files / "model")
    inputs, _ = dataset_windows(load_dataset(files / "data.npz"), [0, 1], ckpt, max_windows=6)
    n = len(registry.figures(plugin_id, registry.run(plugin_id, AnalysisContext(ckpt, inputs))))
    html = out.read_text()
    assert n >= 1 and all(f'id="figure-{i}"' in html for i in range(n)) and f'id="figure-{n}"' not in html
    assert "windows at 6 evenly spaced steps" in html and "0..1 (18 steps)" in html


def test_bad_edit_in_a_real_process_is_one_line_exit_2_and_writes_nothing(files):
    out = files / "never.html"
    res = run_cli(
        files,
        *("analyze", str(files / "model"), "--analysis", "fake-two-figures", "--trajectory", "traj.npz"),
        *("--edit", "S2[4,2].object=dragon", "--out", str(out)),
    )
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        "dtinterp: error: edit 'S2[4,2].object=dragon': unknown object 'dragon' "
        f"(expected one of {', '.join(OBJECT_NAMES)})"
    ]
    assert not out.exists()


@pytest.fixture
def fake_registry(files, monkeypatch):
    """The CLI's registry in this process: the fake third-party plugin only, found by its entry point."""
    monkeypatch.syspath_prepend(str(files / "site"))
    ep = EntryPoint("fake-two-figures", "fake_two_figures:TwoFigures", ENTRY_POINT_GROUP)
    registry = load_registry(include_entry_points=True, eps=[ep])
    monkeypatch.setattr("dtinterp.analyze.get_registry", lambda: registry)
    yield registry
    sys.modules.pop("fake_two_figures", None)


BASE = {"model": "model", "--analysis": "fake-two-figures", "--trajectory": "traj.npz", "--out": "bad.html"}


@pytest.mark.parametrize(
    "changes, extra, message",
    [
        ({"--analysis": "no-such-analysis"}, [], "unknown analysis 'no-such-analysis' (available: "),
        ({}, ["--param", "scale=11"], "parameter 'scale': 11.0 is above the maximum 10.0"),
        ({}, ["--param", "scale=lots"], "parameter 'scale': expected float, got 'lots'"),
        ({}, ["--param", "scale=nan"], "parameter 'scale': expected float, got nan"),
        ({}, ["--param", "nonsense=1"], "has no parameter 'nonsense' (parameters: scale)"),
        ({}, ["--param", "scale"], "--param 'scale': expected key=value"),
        ({}, ["--param", "scale=1", "--param", "scale=2"], "--param 'scale' is given twice"),
        ({}, ["--edit", "R2=much"], "RTG value 'much' is not a number"),
        ({}, ["--edit", "R9=0.5"], "edit R9=0.5: timestep 9 is outside the window 1..4"),
        ({}, ["--step", "500"], "--step 500 is outside the episode's steps 0.."),
        ({"--out": "missing_dir/r.html"}, [], "directory 'missing_dir' does not exist"),
        ({"--out": "."}, [], "--out '.' is a directory"),
        ({"--out": "bad.json"}, [], "--json and --out name the same file 'bad.json'"),
        ({"model": "no_model_here"}, [], "model directory 'no_model_here' does not exist"),
        ({"--trajectory": None}, [], "analysis 'fake-two-figures' runs on windows: give --trajectory FILE"),
        ({}, ["--rollout"], "give one input source, not --trajectory and --rollout"),
        ({}, ["--episodes", "2"], "--episodes does not apply to --trajectory inputs"),
        ({"--trajectory": "data.npz"}, [], "holds 3 episodes; a trajectory file holds one"),
        ({"--trajectory": "nothing.npz"}, [], "--trajectory file 'nothing.npz' does not exist"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    files, fake_registry, capsys, monkeypatch, changes, extra, message
):
    monkeypatch.chdir(files)
    argv = {**BASE, **changes}
    cmd = ["analyze", argv.pop("model")]
    cmd += [x for k, v in argv.items() if v is not None for x in (k, v)]
    assert main([*cmd, *extra, "--json", "bad.json"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("dtinterp analyze: ")]
    assert len(err) == 1 and err[0].startswith("dtinterp: error: ") and message in err[0], err
    assert not (files / "bad.html").exists() and not (files / "bad.json").exists()
