"""The plugin system: discovery, conflicts, isolation, env vars, hooks."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from ctrlgen.core.cli.main import main
from ctrlgen.core.engine.preprocess import preprocess
from ctrlgen.core.errors import PluginError
from ctrlgen.core.plugins import manager as plugins
from ctrlgen.core.plugins.registry import UnknownNameError

POSTERIZE = """
import numpy as np
from ctrlgen import hookimpl, Param, PreprocessorSpec

def run(image, mask=None, *, levels):
    step = 256 // levels
    return (image // step * step).astype(np.uint8)

@hookimpl
def ctrlgen_preprocessors():
    yield PreprocessorSpec(name="Posterize", run=run, description="fewer levels",
                           params=(Param("levels", "int", default=4, min=2, max=16, description="levels"),))
"""

CANNY_CLONE = """
from ctrlgen import hookimpl, PreprocessorSpec

@hookimpl
def ctrlgen_preprocessors():
    yield PreprocessorSpec(name="Canny", run=lambda image, mask=None: image, description="clone")
"""


def test_entry_point_plugin_is_discovered_and_runs(make_distribution):
    make_distribution("ctrlgen-posterize", "1.2.3", {"posterize": "cg_posterize"}, {"cg_posterize": POSTERIZE})
    host = plugins.get_host()
    info = host.infos["posterize"]
    assert (info.distribution, info.version, info.builtin) == ("ctrlgen-posterize", "1.2.3", False)
    assert info.hooks == ["ctrlgen_preprocessors"]
    image = np.full((10, 12, 3), 200, np.uint8)
    result = preprocess("posterize", image, levels=2)
    assert result.image.max() == 128
    assert info.provides == {"preprocessors": ["posterize"]}
    assert plugins.get_registry("preprocessors").provider("posterize").distribution == "ctrlgen-posterize"


CLONE_WITH_ANOTHER_NAME = CANNY_CLONE + """
@hookimpl(specname="ctrlgen_preprocessors")
def more_preprocessors():
    yield PreprocessorSpec(name="clone_only", run=lambda image, mask=None: image, description="only here")
"""


def test_duplicate_name_withholds_only_that_name(make_distribution, tmp_path, capsys):
    make_distribution("ctrlgen-clone", "0.9", {"clone": "cg_clone"}, {"cg_clone": CLONE_WITH_ANOTHER_NAME})
    registry = plugins.get_registry("preprocessors")  # builds: the conflict is not the kind's failure
    # 1. The conflicting name is withheld everywhere: never one of the two picked, never renamed.
    assert "canny" not in registry and "canny" not in registry.names()
    assert all(spec.name != "canny" for spec in registry)
    assert not any(name.startswith("canny") and name != "canny" for name in registry.names())
    # 2. Asking for it names both providers and the way out.
    with pytest.raises(PluginError) as info:
        registry.get("Canny")
    message = str(info.value)
    assert "preprocessor 'canny'" in message
    assert "ctrlgen 0.1.0 (plugin 'ctrlgen.preprocessors.canny')" in message
    assert "ctrlgen-clone 0.9 (plugin 'clone')" in message
    assert "CTRLGEN_DISABLE_PLUGINS=clone keeps 'ctrlgen.preprocessors.canny'" in message
    assert "CTRLGEN_DISABLE_PLUGINS=ctrlgen.preprocessors.canny keeps 'clone'" in message
    assert isinstance(info.value, UnknownNameError)  # answered like an unknown name (404/422), not a crash
    with pytest.raises(PluginError, match="Conflicting plugins provide the preprocessor 'canny'"):
        preprocess("canny", np.zeros((8, 8, 3), np.uint8))
    # 3. Everything else works, the conflicting plugin's other names included.
    assert {"depth_midas", "blur_gaussian", "clone_only"} <= set(registry.names())
    assert preprocess("blur_gaussian", np.zeros((8, 8, 3), np.uint8)).image.shape == (8, 8, 3)
    assert registry.provider("clone_only").distribution == "ctrlgen-clone"
    (conflict,) = plugins.get_host().conflicts()
    assert (conflict.kind, conflict.name) == ("preprocessors", "canny")
    assert [p.plugin for p in conflict.providers] == ["ctrlgen.preprocessors.canny", "clone"]
    # 4. `ctrlgen preprocess` of another name runs; of the withheld one, it says why.
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "in.png")
    assert main(["preprocess", "blur_gaussian", str(tmp_path / "in.png"), str(tmp_path / "out.png")]) == 0
    assert (tmp_path / "out.png").is_file()
    assert main(["preprocess", "canny", str(tmp_path / "in.png"), str(tmp_path / "canny.png")]) == 2
    assert "CTRLGEN_DISABLE_PLUGINS=clone" in capsys.readouterr().err
    assert not (tmp_path / "canny.png").exists()


def test_three_providers_and_a_plugin_yielding_a_name_twice(make_distribution):
    twice = """
from ctrlgen import hookimpl, AdapterSpec

@hookimpl
def ctrlgen_adapters():
    yield AdapterSpec(name="echo", attach=lambda context, uses: None, description="one")
    yield AdapterSpec(name="Echo", attach=lambda context, uses: None, description="two")
"""
    make_distribution("ctrlgen-clone", "0.9", {"clone": "cg_clone"}, {"cg_clone": CANNY_CLONE})
    make_distribution("ctrlgen-clone2", "1.0", {"clone2": "cg_clone2"}, {"cg_clone2": CANNY_CLONE})
    make_distribution("ctrlgen-twice", "0.1", {"twice": "cg_twice"}, {"cg_twice": twice})
    by_name = {c.name: c for c in plugins.get_host().conflicts()}
    assert set(by_name) == {"canny", "echo"}
    canny = by_name["canny"]
    assert [p.plugin for p in canny.providers] == ["ctrlgen.preprocessors.canny", "clone", "clone2"]
    assert "CTRLGEN_DISABLE_PLUGINS=clone,clone2 keeps 'ctrlgen.preprocessors.canny'" in canny.message
    assert "more than once" in by_name["echo"].message and "CTRLGEN_DISABLE_PLUGINS=twice" in by_name["echo"].message
    assert "controlnet" in plugins.get_registry("adapters") and "echo" not in plugins.get_registry("adapters")


def test_strict_mode_raises_on_a_conflict(make_distribution, monkeypatch):
    monkeypatch.setenv("CTRLGEN_STRICT_PLUGINS", "1")
    make_distribution("ctrlgen-clone", "0.9", {"clone": "cg_clone"}, {"cg_clone": CANNY_CLONE})
    with pytest.raises(PluginError, match="CTRLGEN_DISABLE_PLUGINS=clone"):
        plugins.get_registry("preprocessors")


def test_blocking_one_side_resolves_a_conflict(make_distribution, monkeypatch):
    make_distribution("ctrlgen-clone", "0.9", {"clone": "cg_clone"}, {"cg_clone": CANNY_CLONE})
    monkeypatch.setenv("CTRLGEN_DISABLE_PLUGINS", "ctrlgen.preprocessors.canny")
    plugins.reset()
    spec = plugins.get_registry("preprocessors").get("canny")
    assert spec.description == "clone"
    assert plugins.get_host().infos["ctrlgen.preprocessors.canny"].blocked


def test_load_plugins_allow_list(make_distribution, monkeypatch):
    make_distribution("ctrlgen-posterize", "1.2.3", {"posterize": "cg_posterize"}, {"cg_posterize": POSTERIZE})
    make_distribution("ctrlgen-clone", "0.9", {"clone": "cg_clone"}, {"cg_clone": CANNY_CLONE})
    monkeypatch.setenv("CTRLGEN_LOAD_PLUGINS", "posterize")
    plugins.reset()
    registry = plugins.get_registry("preprocessors")  # no conflict: clone is not loaded
    assert "posterize" in registry and registry.get("canny").description.startswith("Canny")
    assert plugins.get_host().infos["clone"].blocked
    monkeypatch.setenv("CTRLGEN_LOAD_PLUGINS", "")
    plugins.reset()
    assert "posterize" not in plugins.get_registry("preprocessors")


def test_disable_by_distribution_name(make_distribution, monkeypatch):
    make_distribution("ctrlgen-posterize", "1.2.3", {"posterize": "cg_posterize"}, {"cg_posterize": POSTERIZE})
    monkeypatch.setenv("CTRLGEN_DISABLE_PLUGINS", "ctrlgen-posterize")
    plugins.reset()
    assert "posterize" not in plugins.get_registry("preprocessors")


BROKEN_IMPORT = "raise ImportError('needs libfoo 2.0')\n"
RAISING_HOOK = """
from ctrlgen import hookimpl
@hookimpl
def ctrlgen_preprocessors():
    raise RuntimeError('boom in hook')
"""
BAD_YIELD = """
from ctrlgen import hookimpl
@hookimpl
def ctrlgen_preprocessors():
    yield "not a spec"
"""
MISSPELLED = """
from ctrlgen import hookimpl
@hookimpl
def ctrlgen_preprocesors():
    return []
"""


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (BROKEN_IMPORT, "load: ImportError: needs libfoo 2.0"),
        (RAISING_HOOK, "ctrlgen_preprocessors: RuntimeError: boom in hook"),
        (BAD_YIELD, "yielded str, expected PreprocessorSpec"),
        (MISSPELLED, "unknown hook 'ctrlgen_preprocesors'; is it misspelled?"),
    ],
)
def test_broken_plugin_is_isolated(make_distribution, source, expected, capsys):
    make_distribution("ctrlgen-broken", "0.1", {"broken": "cg_broken"}, {"cg_broken": source})
    make_distribution("ctrlgen-posterize", "1.2.3", {"posterize": "cg_posterize"}, {"cg_posterize": POSTERIZE})
    registry = plugins.get_registry("preprocessors")
    assert {"canny", "posterize"} <= set(registry.names())
    errors = plugins.get_host().infos["broken"].errors
    assert any(expected in e for e in errors), errors
    assert main(["plugins"]) == 0
    lines = capsys.readouterr().out.splitlines()
    (header,) = [line for line in lines if line.startswith("broken  ")]
    assert header.endswith(", FAILED]"), header  # import errors and hooks that raise alike
    assert any(line.strip().startswith("error:") and expected in line for line in lines), lines
    assert any(line.startswith("posterize  ") and line.endswith(", loaded]") for line in lines), lines
    assert main(["plugins", "--json"]) == 0
    by_name = {p["name"]: p for p in json.loads(capsys.readouterr().out)["plugins"]}
    assert by_name["broken"]["status"] == "FAILED" and by_name["posterize"]["status"] == "loaded"


@pytest.mark.parametrize("source", [BROKEN_IMPORT, RAISING_HOOK, MISSPELLED])
def test_strict_mode_reraises(make_distribution, monkeypatch, source):
    monkeypatch.setenv("CTRLGEN_STRICT_PLUGINS", "1")
    make_distribution("ctrlgen-broken", "0.1", {"broken": "cg_broken"}, {"cg_broken": source})
    with pytest.raises(Exception, match="libfoo|boom|misspelled|ctrlgen_preprocesors"):
        plugins.get_registry("preprocessors")


def test_event_observer_exceptions_are_isolated(make_distribution):
    observer = """
from ctrlgen import hookimpl
seen = []
@hookimpl
def ctrlgen_job_event(event):
    seen.append(event.kind)
    raise ValueError('observer bug')
"""
    make_distribution("ctrlgen-observer", "0.1", {"observer": "cg_observer"}, {"cg_observer": observer})
    from ctrlgen.core.plugins.events import JobEvent

    plugins.emit_event(JobEvent("j1", "started"))
    import cg_observer

    assert cg_observer.seen == ["started"]
    assert any("observer bug" in e for e in plugins.get_host().infos["observer"].errors)


def test_startup_hook_receives_registries(make_distribution):
    source = """
from ctrlgen import hookimpl
calls = []
@hookimpl
def ctrlgen_startup(context):
    calls.append(sorted(context.preprocessors.names()))
"""
    make_distribution("ctrlgen-start", "0.1", {"start": "cg_start"}, {"cg_start": source})
    plugins.startup()
    plugins.startup()
    import cg_start

    assert len(cg_start.calls) == 1 and "canny" in cg_start.calls[0]


def test_plugins_json_lists_builtins_with_all(fresh_plugins, capsys):
    assert main(["plugins", "--all", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    by_name = {p["name"]: p for p in data["plugins"]}
    canny = by_name["ctrlgen.preprocessors.canny"]
    assert canny["provides"] == {"preprocessors": ["canny"]} and canny["builtin"]
    assert by_name["ctrlgen.adapters.controlnet"]["provides"] == {"adapters": ["controlnet"]}
    assert all(not p["errors"] for p in data["plugins"]), data


def test_plugins_json_reports_conflicts_with_exit_code(make_distribution, capsys):
    make_distribution("ctrlgen-clone", "0.9", {"clone": "cg_clone"}, {"cg_clone": CANNY_CLONE})
    assert main(["plugins", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    (conflict,) = data["conflicts"]
    assert conflict["kind"] == "preprocessors" and conflict["name"] == "canny"
    assert conflict["providers"] == [
        {"plugin": "ctrlgen.preprocessors.canny", "distribution": "ctrlgen", "version": "0.1.0"},
        {"plugin": "clone", "distribution": "ctrlgen-clone", "version": "0.9"}]
    assert "Conflicting plugins provide the preprocessor 'canny'" in conflict["message"]
    assert "CTRLGEN_DISABLE_PLUGINS=clone" in conflict["message"]
    clone = {p["name"]: p for p in data["plugins"]}["clone"]
    assert clone["status"] == "loaded" and clone["provides"] == {"preprocessors": ["canny"]}
    # The text listing says the same, and marks the withheld name.
    assert main(["plugins"]) == 1
    out = capsys.readouterr().out
    assert "preprocessors: canny (CONFLICT: unavailable)" in out
    assert "conflict in preprocessors: Conflicting plugins provide the preprocessor 'canny'" in out


def test_plugins_json_prints_param_schemas_and_weights(make_distribution, capsys):
    make_distribution("ctrlgen-posterize", "1.2.3", {"posterize": "cg_posterize"}, {"cg_posterize": POSTERIZE})
    assert main(["plugins", "--json"]) == 0
    (posterize,) = json.loads(capsys.readouterr().out)["plugins"]
    (spec,) = posterize["preprocessors"]
    assert spec["name"] == "posterize" and spec["description"] == "fewer levels"
    assert spec["params"] == [{"name": "levels", "type": "int", "default": 4, "min": 2, "max": 16, "step": None,
                               "choices": [], "description": "levels", "category": "", "required": False}]
    assert spec["needs_weights"] is False and spec["weights"] == []
    assert main(["plugins", "--all", "--json"]) == 0
    by_name = {p["name"]: p for p in json.loads(capsys.readouterr().out)["plugins"]}
    specs = {s["name"]: s for p in by_name.values() for s in p.get("preprocessors", [])}
    adapters = {s["name"]: s for p in by_name.values() for s in p.get("adapters", [])}
    registry = plugins.get_registry("preprocessors")
    assert set(specs) == set(registry.names())  # every preprocessor, with its schema
    for name, spec in specs.items():
        assert spec["params"] == [p.to_json() for p in registry.get(name).params], name
    assert specs["canny"]["needs_weights"] is False and specs["canny"]["weights"] == []
    softedge = specs["softedge_hed"]
    assert softedge["needs_weights"] is True
    assert softedge["weights"][0]["filename"] == "ControlNetHED.pth"
    assert softedge["weights"][0]["source"] and softedge["weights"][0]["folders"] == ["annotators"]
    assert set(adapters) == set(plugins.get_registry("adapters").names())
    reference = adapters["reference"]
    assert reference["architectures"] and {"name", "type", "default", "min", "max", "choices"} <= set(
        reference["params"][0])
    assert any(p["type"] == "model" and p["category"] for p in adapters["ip_adapter"]["params"])


def test_manager_is_lazy_and_cached(fresh_plugins):
    code = "import ctrlgen, ctrlgen.core.plugins.manager as p; print(p._host is None)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"
    assert plugins.get_plugin_manager() is plugins.get_plugin_manager()


@pytest.mark.parametrize("argv", [["--help"], ["plugins", "--all"], ["plugins", "--json"]])
def test_cli_does_not_import_torch(argv):
    code = (
        "import sys\nfrom ctrlgen.core.cli.main import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'diffusers' not in sys.modules\nprint('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


HELLO_COMMAND = """
from ctrlgen import hookimpl

def run(args):
    print("hello", args.name)
    return 7

@hookimpl
def ctrlgen_cli_commands(subparsers):
    p = subparsers.add_parser("hello", help="say hello")
    p.add_argument("name")
    p.set_defaults(func=run)
"""

SERVE_THIEF = """
from ctrlgen import hookimpl

@hookimpl
def ctrlgen_cli_commands(subparsers):
    subparsers.add_parser("serve", help="not the real server").set_defaults(func=lambda args: 99)
"""


def test_a_plugin_adds_a_command(make_distribution, capsys):
    make_distribution("ctrlgen-hello", "1.0", {"hello": "cg_hello"}, {"cg_hello": HELLO_COMMAND})
    assert main(["hello", "world"]) == 7
    assert capsys.readouterr().out == "hello world\n"
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "say hello" in capsys.readouterr().out


def test_a_plugin_cannot_take_a_builtin_command(make_distribution, capsys):
    make_distribution("ctrlgen-thief", "1.0", {"thief": "cg_thief"}, {"cg_thief": SERVE_THIEF})
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--help"])
    assert exited.value.code == 0
    assert "not the real server" not in capsys.readouterr().out
    info = plugins.get_host().infos["thief"]
    assert any("ctrlgen_cli_commands" in error and "serve" in error for error in info.errors), info.errors
    assert main(["config-dir"]) == 0  # everything else works


def test_builtin_commands_come_from_the_hook(fresh_plugins):
    infos = plugins.get_host().infos
    for module in ("ctrlgen.host_bridges.server.cli", "ctrlgen.host_bridges.client_cli",
                   "ctrlgen.host_bridges.install_cli", "ctrlgen.preprocessors.pose.openpose",
                   "ctrlgen.detectors.fix_cli"):
        assert "ctrlgen_cli_commands" in infos[module].hooks, module
