"""The package's layering (docs/architecture.md) holds, and the checks that keep it fail when broken.

The contracts are import-linter's, in pyproject.toml (``[tool.importlinter]``): core's floors
import downwards only, core imports no built-in plugin, the plugin packages are layered, and
the host-side client and Krita plugin import nothing of ctrlgen. Import circles are found
here on grimp's graph (the one import-linter builds), imports inside functions and under
``TYPE_CHECKING`` included.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"

_CYCLES_SCRIPT = textwrap.dedent('''
    import json, sys
    import grimp

    graph = grimp.build_graph("ctrlgen", cache_dir=None)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(node):  # Tarjan's strongly connected components
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1 or node in edges.get(node, ()):
                cycles.append(sorted(component))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    print(json.dumps(cycles))
''')


def _run(args: list[str], src: Path, **kwargs) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(src), "PATH": str(Path(sys.executable).parent), "HOME": str(src)}
    return subprocess.run(args, cwd=kwargs.pop("cwd", REPO), env=env, capture_output=True, text=True,
                          timeout=120, **kwargs)


def lint_imports(src: Path) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "lint-imports"  # import-linter's command, in this venv
    return _run([str(script), "--config", str(REPO / "pyproject.toml"), "--no-cache"], src)


def import_cycles(src: Path) -> list[list[str]]:
    result = _run([sys.executable, "-c", _CYCLES_SCRIPT], src)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def src_copy(tmp_path: Path) -> Path:
    """A copy of the package to break on purpose."""
    shutil.copytree(SRC / "ctrlgen", tmp_path / "ctrlgen", ignore=shutil.ignore_patterns("__pycache__", "assets"))
    return tmp_path


def _append(path: Path, code: str) -> None:
    path.write_text(path.read_text(encoding="utf-8") + "\n\n" + textwrap.dedent(code), encoding="utf-8")


def test_the_layering_contracts_hold():
    result = lint_imports(SRC)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout and "5 kept" in result.stdout


def test_there_are_no_import_circles():
    assert import_cycles(SRC) == []


@pytest.mark.parametrize(
    "module, code, contract",
    [
        # a lower floor reaching up, even lazily inside a function
        ("core/plugins/specs.py", "def _late():\n    from ctrlgen.core.engine import jobs  # noqa\n",
         "core's floors import downwards only"),
        # the engine asking an adapter, as it once asked ControlNet about the inpaint preprocessor
        ("core/engine/engine.py", "def _late():\n    from ctrlgen.adapters.controlnet import inpaint  # noqa\n",
         "core imports no built-in plugin"),
        # a preprocessor reaching into an adapter
        ("preprocessors/canny.py", "from ctrlgen.adapters import lora  # noqa\n", "built-in plugin packages"),
        # the standard-library client growing a dependency on the package
        ("host_bridges/client.py", "from ctrlgen.core import errors  # noqa\n", "the client and the Krita plugin"),
    ],
)
def test_a_forbidden_import_breaks_a_contract(src_copy: Path, module: str, code: str, contract: str):
    _append(src_copy / "ctrlgen" / module, code)
    result = lint_imports(src_copy)
    assert result.returncode != 0
    broken = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    assert broken, result.stdout
    assert contract in result.stdout.split("Broken contracts")[-1], result.stdout


def test_an_import_circle_is_found(src_copy: Path):
    # config -> images -> config: a circle through a function-level import
    _append(src_copy / "ctrlgen" / "core" / "config.py", "def _late():\n    from ctrlgen.core import images  # noqa\n")
    _append(src_copy / "ctrlgen" / "core" / "images.py", "def _late2():\n    from ctrlgen.core import config  # noqa\n")
    cycles = import_cycles(src_copy)
    assert ["ctrlgen.core.config", "ctrlgen.core.images"] in cycles, cycles
