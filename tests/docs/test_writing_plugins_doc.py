"""Build, install and run the example plugin package from docs/writing_plugins.md."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

DOC = Path(__file__).resolve().parents[2] / "docs" / "writing_plugins.md"


def materialise(target: Path) -> list[str]:
    """Write every ```lang file=PATH block of the doc under ``target``."""
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"^```\w+ file=(\S+)\n(.*?)^```$", text, flags=re.M | re.S)
    for relative, body in blocks:
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body, encoding="utf-8")
    return [relative for relative, _ in blocks]


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory):
    root = tmp_path_factory.mktemp("example")
    package = root / "ctrlgen-posterize"
    files = materialise(package)
    assert {"pyproject.toml", "src/ctrlgen_posterize/__init__.py", "tests/test_posterize.py"} <= set(files)
    wheels = root / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
         str(package)],
        check=True, capture_output=True, text=True,
    )
    (wheel,) = wheels.glob("ctrlgen_posterize-1.0.0-*.whl")
    target = root / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True, capture_output=True, text=True,
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")]))
    env.pop("CTRLGEN_LOAD_PLUGINS", None)
    env.pop("CTRLGEN_DISABLE_PLUGINS", None)
    return package, env


def run(args, env, **kwargs):
    return subprocess.run([sys.executable, "-m", "ctrlgen.core.cli.main", *args], env=env,
                          capture_output=True, text=True, **kwargs)


def test_installed_example_is_discovered(installed_example):
    _, env = installed_example
    result = run(["plugins", "--json"], env)
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}
    info = plugins["posterize"]
    assert info["distribution"] == "ctrlgen-posterize" and info["version"] == "1.0.0"
    assert info["hooks"] == ["ctrlgen_preprocessors"]
    assert info["provides"] == {"preprocessors": ["posterize"]}
    assert info["errors"] == []


def test_installed_example_runs_from_the_cli(installed_example, tmp_path):
    _, env = installed_example
    gradient = np.tile(np.arange(256, dtype=np.uint8)[None, :, None], (8, 1, 3))
    Image.fromarray(gradient).save(tmp_path / "in.png")
    result = run(["preprocess", "posterize", str(tmp_path / "in.png"), str(tmp_path / "out.png"),
                  "--param", "levels=2"], env)
    assert result.returncode == 0, result.stderr
    out = np.asarray(Image.open(tmp_path / "out.png"))
    assert out.shape == (8, 256, 3) and sorted(np.unique(out)) == [64, 192]
    bad = run(["preprocess", "posterize", str(tmp_path / "in.png"), str(tmp_path / "x.png"),
               "--param", "levels=40"], env)
    assert bad.returncode == 2
    assert "posterize.levels=40 is above its maximum 16" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_example_package_own_tests_pass(installed_example):
    package, env = installed_example
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(package / "tests")], env=env, capture_output=True, text=True, cwd=package)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\b1[0-9] passed\b", result.stdout), result.stdout
