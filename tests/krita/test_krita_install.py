"""`ctrlgen install krita` / `uninstall krita`, kritarc editing, and what the plugin may import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from ctrlgen.core.cli.main import main
from ctrlgen.host_bridges import krita as installer
from ctrlgen.host_bridges.krita import PLUGIN_NAME, install, set_ini_value, uninstall

PLUGIN_SOURCE = Path(installer.__file__).parent / PLUGIN_NAME
CLIENT_SOURCE = Path(installer.__file__).parents[1] / "client.py"

KRITARC = """[General]
LastPreset=Basic-5

[python]
enable_scripter=true

[theme]
Theme=Krita dark
"""


def test_install_copies_plugin_and_client_and_enables_it(tmp_path):
    pykrita, kritarc = tmp_path / "pykrita", tmp_path / "kritarc"
    kritarc.write_text(KRITARC)
    target = install(pykrita, kritarc=kritarc)
    assert target == pykrita / PLUGIN_NAME
    desktop = (pykrita / f"{PLUGIN_NAME}.desktop").read_text()
    assert "ServiceTypes=Krita/PythonPlugin" in desktop and f"X-KDE-Library={PLUGIN_NAME}" in desktop
    assert (target / "client.py").read_bytes() == CLIENT_SOURCE.read_bytes()
    hostlogic = CLIENT_SOURCE.with_name("hostlogic.py")  # shared with the GIMP plug-in
    assert (target / "hostlogic.py").read_bytes() == hostlogic.read_bytes()
    for source in PLUGIN_SOURCE.glob("*.py"):
        assert (target / source.name).read_bytes() == source.read_bytes()
    assert (target / "manual.html").is_file()
    assert not list(target.rglob("__pycache__"))
    # Only the one key is added, in Krita's [python] section; the rest of the file is untouched.
    assert kritarc.read_text() == KRITARC.replace("enable_scripter=true\n",
                                                  "enable_scripter=true\nenable_ctrlgen_krita=true\n")


def test_reinstall_replaces_and_uninstall_removes_everything_it_added(tmp_path):
    pykrita, kritarc = tmp_path / "pykrita", tmp_path / "kritarc"
    kritarc.write_text(KRITARC)
    install(pykrita, kritarc=kritarc)
    (pykrita / PLUGIN_NAME / "stale.py").write_text("# from an old version")
    install(pykrita, kritarc=kritarc)
    assert not (pykrita / PLUGIN_NAME / "stale.py").exists()
    assert kritarc.read_text().count("enable_ctrlgen_krita") == 1
    removed = uninstall(pykrita, kritarc=kritarc)
    assert set(removed) == {pykrita / PLUGIN_NAME, pykrita / f"{PLUGIN_NAME}.desktop"}
    assert list(pykrita.iterdir()) == []
    assert kritarc.read_text() == KRITARC
    assert uninstall(pykrita, kritarc=kritarc) == []


@pytest.mark.parametrize(("text", "value", "expected"), [
    ("", "true", "[python]\nenable_ctrlgen_krita=true\n"),
    ("[General]\nA=1", "true", "[General]\nA=1\n\n[python]\nenable_ctrlgen_krita=true\n"),
    ("[python]\nenable_ctrlgen_krita=false\n", "true", "[python]\nenable_ctrlgen_krita=true\n"),
    ("[python]\nenable_ctrlgen_krita=true\n[x]\n", None, "[python]\n[x]\n"),
    ("[python]\nx=1\n\n[y]\nenable_ctrlgen_krita=true\n", "true",
     "[python]\nx=1\nenable_ctrlgen_krita=true\n\n[y]\nenable_ctrlgen_krita=true\n"),
])
def test_set_ini_value_edits_one_key_in_one_section(text, value, expected):
    assert set_ini_value(text, "python", "enable_ctrlgen_krita", value) == expected


def test_cli_install_and_uninstall(tmp_path, capsys):
    pykrita, kritarc = tmp_path / "p", tmp_path / "kritarc"
    assert main(["install", "krita", "--pykrita-dir", str(pykrita), "--kritarc", str(kritarc)]) == 0
    out = capsys.readouterr().out
    assert str(pykrita / PLUGIN_NAME) in out and "ctrlgen serve" in out
    assert "enable_ctrlgen_krita=true" in kritarc.read_text()
    assert main(["uninstall", "krita", "--pykrita-dir", str(pykrita), "--kritarc", str(kritarc)]) == 0
    assert "Removed" in capsys.readouterr().out and not (pykrita / PLUGIN_NAME).exists()


MYEDITOR = """
import shutil
from pathlib import Path
from ctrlgen import hookimpl, HostBridgeSpec

DEFAULT = Path({default!r})

def install(target=None):
    folder = (target or DEFAULT) / "ctrlgen_myeditor"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plugin.py").write_text("# myeditor plug-in")
    return folder

def uninstall(target=None):
    folder = (target or DEFAULT) / "ctrlgen_myeditor"
    if not folder.exists():
        return []
    shutil.rmtree(folder)
    return [folder]

@hookimpl
def ctrlgen_host_bridges():
    yield HostBridgeSpec(name="MyEditor", install=install, uninstall=uninstall, description="test host")
"""


def test_cli_installs_a_host_bridge_a_plugin_registers(make_distribution, tmp_path, capsys):
    default = tmp_path / "myeditor-home"
    make_distribution("ctrlgen-myeditor", "0.1", {"myeditor": "cg_myeditor"},
                      {"cg_myeditor": MYEDITOR.format(default=str(default))})
    assert main(["install", "myeditor", "--target", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "ctrlgen_myeditor" / "plugin.py").is_file()
    assert f"Installed the ctrlgen myeditor plugin in {tmp_path / 'elsewhere' / 'ctrlgen_myeditor'}" in capsys.readouterr().out
    assert main(["install", "MyEditor"]) == 0  # names are normalised; no --target → the host's own folder
    assert (default / "ctrlgen_myeditor" / "plugin.py").is_file()
    assert main(["uninstall", "myeditor"]) == 0
    assert "Removed" in capsys.readouterr().out and not (default / "ctrlgen_myeditor").exists()
    assert main(["uninstall", "myeditor"]) == 0
    assert "nothing removed" in capsys.readouterr().out
    # Krita's own options are refused for other hosts instead of being dropped silently.
    assert main(["install", "myeditor", "--no-enable"]) == 2
    assert "--no-enable: only for `ctrlgen install krita`" in capsys.readouterr().err


def test_cli_unknown_host_names_the_hosts_there_are(fresh_plugins, capsys):
    assert main(["install", "krtia"]) == 2
    err = capsys.readouterr().err
    assert "Unknown host bridge 'krtia'" in err and "Did you mean 'krita'" in err
    available = err.split("Available: ", 1)[1].split(".", 1)[0].split(", ")  # other hosts (gimp, ...) may be there
    assert "krita" in available


def test_default_folders_follow_the_platform(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    assert installer.default_pykrita_dir() == tmp_path / "data" / "krita" / "pykrita"
    assert installer.kritarc_path() == tmp_path / "config" / "kritarc"
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("APPDATA", str(tmp_path / "Roaming"))
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "Local"))
    assert installer.default_pykrita_dir() == tmp_path / "Roaming" / "krita" / "pykrita"
    assert installer.kritarc_path() == tmp_path / "Local" / "kritarc"
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert installer.default_pykrita_dir() == tmp_path / "Library" / "Application Support" / "krita" / "pykrita"


def test_ctrlgen_help_lists_install_without_importing_torch():
    code = ("import sys, io, contextlib\nfrom ctrlgen.core.cli.main import main\n"
            "buf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf):\n"
            "    try:\n        main(['install', 'krita', '--help'])\n    except SystemExit:\n        pass\n"
            "print('--pykrita-dir' in buf.getvalue(), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "False"]


ALLOWED_OUTSIDE = {"krita", "PyQt5", "PyQt6"}


def test_plugin_imports_only_the_standard_library_krita_and_qt():
    """The plugin runs in Krita's own Python, which has neither ctrlgen nor its dependencies."""
    stdlib = set(sys.stdlib_module_names)
    for path in sorted(PLUGIN_SOURCE.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        fallbacks = {id(node) for handler in ast.walk(tree) if isinstance(handler, ast.ExceptHandler)
                     for node in ast.walk(handler)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and id(node) not in fallbacks:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top in stdlib or top in ALLOWED_OUTSIDE or top == "__future__", f"{path.name} imports {name}"
