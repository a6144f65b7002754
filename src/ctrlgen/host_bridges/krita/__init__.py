"""Install ctrlgen's Krita plugin into Krita's resource folder (``ctrlgen install krita``).

The plugin source is the ``ctrlgen_krita`` package next to this file. Installing copies it,
plus the standard-library bridge client (``ctrlgen/host_bridges/client.py``), into
``<pykrita>/ctrlgen_krita/``, writes ``<pykrita>/ctrlgen_krita.desktop`` and enables the
plugin in ``kritarc`` (section ``[python]``, key ``enable_ctrlgen_krita=true``: what Krita's
Python Plugin Manager writes).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from ctrlgen.core.plugins.manager import hookimpl
from ctrlgen.core.plugins.specs import HostBridgeSpec

PLUGIN_NAME = "ctrlgen_krita"
SOURCE = Path(__file__).resolve().parent / PLUGIN_NAME
CLIENT_SOURCE = Path(__file__).resolve().parents[1] / "client.py"
HOSTLOGIC_SOURCE = CLIENT_SOURCE.with_name("hostlogic.py")  # shared with the GIMP plug-in
ENABLE_KEY = f"enable_{PLUGIN_NAME}"

DESKTOP = f"""[Desktop Entry]
Type=Service
ServiceTypes=Krita/PythonPlugin
X-KDE-Library={PLUGIN_NAME}
X-Python-2-Compatible=false
X-Krita-Manual=manual.html
Name=ctrlgen
Comment=Generate, inpaint and control with ctrlgen (needs a running `ctrlgen serve`)
"""

MANUAL = """<html><body>
<h3>ctrlgen</h3>
<p>Start the server in a terminal with <code>ctrlgen serve</code>, then open
<i>Settings &gt; Dockers &gt; ctrlgen</i> and press <b>Connect</b>.</p>
<p>Generate paints the whole canvas (strength 100 %) or refines it (lower strength);
with a selection it repaints only the selection. Each result arrives as a new layer;
Ctrl+Z removes it. Mark layers as control layers (pose, edges, depth…) or references.</p>
<p>Full guide: docs/krita.md in ctrlgen's source.</p>
</body></html>
"""


def krita_data_dir() -> Path:
    """Krita's per-user resource folder (where ``pykrita`` lives)."""
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming") / "krita"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "krita"
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "krita"


def kritarc_path() -> Path:
    """Krita's settings file (``kritarc``)."""
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local") / "kritarc"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Preferences" / "kritarc"
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "kritarc"


def default_pykrita_dir() -> Path:
    return krita_data_dir() / "pykrita"


def set_ini_value(text: str, section: str, key: str, value: str | None) -> str:
    """``text`` (an INI file such as kritarc) with ``key`` set in ``[section]`` (None: removed).

    Edits the one line only, keeping everything else byte for byte (configparser would
    rewrite the whole file and lose Krita's own formatting and case)."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    header = f"[{section}]"
    start = next((i for i, line in enumerate(lines) if line.strip() == header), None)
    if start is None:
        if value is None:
            return "".join(lines)
        if lines and lines[-1].strip():
            lines.append("\n")
        return "".join(lines) + f"{header}\n{key}={value}\n"
    end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
    for i in range(start + 1, end):
        name = lines[i].split("=", 1)[0].strip()
        if name == key:
            if value is None:
                del lines[i]
            else:
                lines[i] = f"{key}={value}\n"
            return "".join(lines)
    if value is not None:
        insert = end
        while insert > start + 1 and not lines[insert - 1].strip():
            insert -= 1  # keep the blank line before the next section
        lines.insert(insert, f"{key}={value}\n")
    return "".join(lines)


def _write_kritarc(kritarc: Path, value: str | None) -> None:
    text = kritarc.read_text(encoding="utf-8") if kritarc.is_file() else ""
    updated = set_ini_value(text, "python", ENABLE_KEY, value)
    if updated != text:
        kritarc.parent.mkdir(parents=True, exist_ok=True)
        kritarc.write_text(updated, encoding="utf-8")


def install(pykrita_dir: Path | None = None, kritarc: Path | None = None, enable: bool = True) -> Path:
    """Copy the plugin and the client into ``pykrita_dir`` and enable it; returns the plugin folder.

    A previous install is replaced. ``kritarc`` defaults to Krita's own settings file."""
    target_root = Path(pykrita_dir).expanduser() if pykrita_dir else default_pykrita_dir()
    target_root.mkdir(parents=True, exist_ok=True)
    target = target_root / PLUGIN_NAME
    staging = target_root / f".{PLUGIN_NAME}.new"
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(SOURCE, staging, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(CLIENT_SOURCE, staging / "client.py")
    shutil.copy2(HOSTLOGIC_SOURCE, staging / "hostlogic.py")
    (staging / "manual.html").write_text(MANUAL, encoding="utf-8")
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    (target_root / f"{PLUGIN_NAME}.desktop").write_text(DESKTOP, encoding="utf-8")
    if enable:
        _write_kritarc(kritarc or kritarc_path(), "true")
    return target


def uninstall(pykrita_dir: Path | None = None, kritarc: Path | None = None) -> list[Path]:
    """Remove the plugin (folder and .desktop file) and its kritarc entry; returns what was removed."""
    target_root = Path(pykrita_dir).expanduser() if pykrita_dir else default_pykrita_dir()
    removed = []
    folder = target_root / PLUGIN_NAME
    if folder.exists():
        shutil.rmtree(folder)
        removed.append(folder)
    desktop = target_root / f"{PLUGIN_NAME}.desktop"
    if desktop.exists():
        desktop.unlink()
        removed.append(desktop)
    _write_kritarc(kritarc or kritarc_path(), None)
    return removed


@hookimpl
def ctrlgen_host_bridges():
    yield HostBridgeSpec(name="krita", install=install, uninstall=uninstall,
                         description="Krita 5/6 docker (pykrita plugin)")
