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


def test_duplicate_name_names_both_providers(make_distribution):
    make_distribution("ctrlgen-clone", "0.9", {"clone": "cg_clone"}, {"cg_clone": CANNY_CLONE})
    with pytest.raises(PluginError) as info:
        plugins.get_registry("preprocessors")
    message = str(info.value)
    assert "preprocessor 'canny'" in message
    assert "ctrlgen 0.1.0 (plugin 'ctrlgen.preprocessors.canny')" in message
    assert "ctrlgen-clone 0.9 (plugin 'clone')" in message
    assert "CTRLGEN_DISABLE_PLUGINS=clone" in message


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
    out = capsys.readouterr().out
    assert "broken" in out and "FAILED" in out or expected.split(":")[0] in out


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
    assert "Conflicting plugins" in data["conflicts"]["preprocessors"]


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
                   "ctrlgen.host_bridges.install_cli", "ctrlgen.preprocessors.pose.openpose"):
        assert "ctrlgen_cli_commands" in infos[module].hooks, module
