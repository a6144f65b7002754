"""Build, install and run the example plugin packages from docs/writing_plugins.md (a
preprocessor and an adapter), their own tests included, and check the doc's listings."""

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
PACKAGES = {"ctrlgen-posterize": "ctrlgen_posterize", "ctrlgen-freeu": "ctrlgen_freeu"}


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
def installed_examples(tmp_path_factory, tiny_model_cache):
    """Both example packages built as wheels and installed into one folder on PYTHONPATH."""
    root = tmp_path_factory.mktemp("example")
    files = materialise(root)
    for package, module in PACKAGES.items():
        assert {f"{package}/pyproject.toml", f"{package}/src/{module}/__init__.py"} <= set(files)
        assert any(f.startswith(f"{package}/tests/test_") for f in files)
    wheels, target = root / "wheels", root / "site"
    for package in PACKAGES:
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
             str(root / package)],
            check=True, capture_output=True, text=True,
        )
    for module in PACKAGES.values():
        (wheel,) = wheels.glob(f"{module}-1.0.0-*.whl")
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
            check=True, capture_output=True, text=True,
        )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")]),
               CTRLGEN_TEST_CACHE_DIR=str(tiny_model_cache))  # the tiny models this session built
    env.pop("CTRLGEN_LOAD_PLUGINS", None)
    env.pop("CTRLGEN_DISABLE_PLUGINS", None)
    return root, env


def run(args, env, **kwargs):
    return subprocess.run([sys.executable, "-m", "ctrlgen.core.cli.main", *args], env=env,
                          capture_output=True, text=True, **kwargs)


def test_installed_examples_are_discovered(installed_examples):
    _, env = installed_examples
    result = run(["plugins", "--json"], env)
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}
    info = plugins["posterize"]
    assert info["distribution"] == "ctrlgen-posterize" and info["version"] == "1.0.0"
    assert info["hooks"] == ["ctrlgen_preprocessors"]
    assert info["provides"] == {"preprocessors": ["posterize"]}
    assert info["errors"] == [] and info["status"] == "loaded"
    freeu = plugins["freeu"]
    assert freeu["distribution"] == "ctrlgen-freeu" and freeu["hooks"] == ["ctrlgen_adapters"]
    assert freeu["provides"] == {"adapters": ["freeu"]} and freeu["errors"] == []
    assert [p["name"] for p in freeu["adapters"][0]["params"]] == ["b1", "b2", "s1", "s2"]


def test_the_docs_listing_is_what_ctrlgen_plugins_prints(installed_examples):
    _, env = installed_examples
    text = DOC.read_text(encoding="utf-8")
    console = re.search(r"^```console\n\$ pip install [^\n]*\n\$ ctrlgen plugins\n(.*?)^\$ ", text, re.M | re.S)
    result = run(["plugins"], env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == console.group(1).splitlines()


def _contains(actual, expected, where="") -> None:
    """``expected`` is an excerpt of ``actual``: dicts by key, lists of named dicts by name."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), where
        for key, value in expected.items():
            assert key in actual, f"{where}.{key} is not in the real output"
            _contains(actual[key], value, f"{where}.{key}")
    elif isinstance(expected, list) and expected and all(isinstance(e, dict) and "name" in e for e in expected):
        by_name = {item["name"]: item for item in actual}
        for item in expected:
            assert item["name"] in by_name, f"{where}: no {item['name']!r} in the real output"
            _contains(by_name[item["name"]], item, f"{where}[{item['name']}]")
    else:
        assert actual == expected, f"{where}: the doc says {expected!r}, ctrlgen prints {actual!r}"


def test_the_docs_json_excerpt_is_what_ctrlgen_plugins_json_prints(installed_examples):
    _, env = installed_examples
    excerpt = re.search(r"An excerpt:\n\n```json\n(.*?)^```$", DOC.read_text(encoding="utf-8"), re.M | re.S)
    result = run(["plugins", "--json"], env)
    assert result.returncode == 0, result.stderr
    _contains(json.loads(result.stdout), json.loads(excerpt.group(1)), "plugins --json")


def test_installed_example_runs_from_the_cli(installed_examples, tmp_path):
    _, env = installed_examples
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


@pytest.mark.parametrize(("package", "at_least"), [("ctrlgen-posterize", 10), ("ctrlgen-freeu", 11)])
def test_example_package_own_tests_pass(installed_examples, package, at_least):
    root, env = installed_examples
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                            env=env, capture_output=True, text=True, cwd=root / package, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    passed = re.search(r"\b(\d+) passed\b", result.stdout)
    assert passed and int(passed.group(1)) >= at_least, result.stdout
    assert not re.search(r"\b(failed|skipped|error)", result.stdout.splitlines()[-1]), result.stdout
