"""The example plugin package installs, registers through its entry point and passes its own tests.

``pip install --no-deps --no-build-isolation -e examples/dtinterp-example-plugin`` goes into the current
environment (no network: dtinterp is already installed and setuptools is in the venv) and stays there;
re-installing is idempotent. Each check runs in a fresh interpreter, since entry points are discovered
from the installed distributions at start-up.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "dtinterp-example-plugin"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

pytestmark = pytest.mark.skipif(importlib.util.find_spec("pip") is None, reason="pip is not available")

CHECK = """
import json
import torch
from importlib.metadata import entry_points
from dtinterp.model import DTConfig, DTInputs, HookedDecisionTransformer
from dtinterp.plugins import AnalysisContext
from dtinterp.plugins.registry import ENTRY_POINT_GROUP, load_registry

reg = load_registry()
(ep,) = [e for e in entry_points(group=ENTRY_POINT_GROUP) if e.name == "logit-lens"]
model = HookedDecisionTransformer(DTConfig(context_len=3, n_layers=2, n_heads=2, d_model=16, d_mlp=32, seed=0))
g = torch.Generator().manual_seed(0)
inputs = DTInputs(
    obs=torch.randint(0, 3, (2, 3, 7, 7, 3), generator=g).to(torch.uint8),
    directions=torch.zeros(2, 3, dtype=torch.long),
    rtg=torch.rand(2, 3, generator=g),
    actions=torch.randint(0, 7, (2, 3), generator=g),
    timesteps=torch.arange(3).expand(2, 3).clone(),
    pad_mask=torch.ones(2, 3, dtype=torch.bool),
)
ctx = AnalysisContext(model, inputs)
result = reg.run("logit-lens", ctx, {"action": "left"})
figures = reg.figures("logit-lens", result)
lens = torch.as_tensor(result.data["lens_logits"])
print(json.dumps({
    "entry_point": ep.value,
    "dist": ep.dist.name if ep.dist else None,
    "module": type(reg.get("logit-lens")).__module__,
    "failures": [str(f) for f in reg.failures],
    "category": reg.get("logit-lens").category,
    "max_err": float((lens[-1] - ctx.logits).abs().max()),
    "n_figures": len(figures),
}))
"""


@pytest.fixture(scope="module")
def installed():
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-e",
            str(EXAMPLE),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_registry_finds_and_runs_it_through_the_entry_point(installed):
    res = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300, env=ENV)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout.splitlines()[-1])
    assert report["entry_point"] == "dtinterp_logit_lens:LogitLens"
    assert report["dist"] == "dtinterp-example-plugin"
    assert report["module"] == "dtinterp_logit_lens" and report["category"] == "dynamic"
    assert [f for f in report["failures"] if "logit-lens" in f] == []
    assert report["max_err"] < 1e-5  # the lens at the last layer is the model's own output
    assert report["n_figures"] == 2


def test_the_example_package_passes_its_own_tests(installed):
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", str(EXAMPLE / "tests")],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
        cwd=EXAMPLE,
    )
    assert res.returncode == 0, res.stdout[-3000:]
    assert " passed" in res.stdout and "skipped" not in res.stdout and "failed" not in res.stdout
