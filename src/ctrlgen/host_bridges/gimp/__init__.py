"""Install ctrlgen's GIMP 3 plug-in into GIMP's plug-ins folder (``ctrlgen install gimp``).

GIMP 3 loads a plug-in only from ``<plug-ins>/NAME/NAME.py`` (the folder named exactly as the
file) and only when the file is executable; otherwise it skips it without a word. Installing
copies ``ctrlgen-gimp.py`` (the entry file), the ``ctrlgen_gimp`` package and the
standard-library bridge client into ``<plug-ins>/ctrlgen-gimp/``, sets the executable bit, and
checks the result with :func:`check_install` (a broken previous install is reported too).
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
from pathlib import Path

from ctrlgen.core.errors import CtrlgenError
from ctrlgen.core.plugins.manager import hookimpl
from ctrlgen.core.plugins.specs import HostBridgeSpec

PLUGIN_NAME = "ctrlgen-gimp"
HERE = Path(__file__).resolve().parent
ENTRY_SOURCE = HERE / f"{PLUGIN_NAME}.py"
PACKAGE_SOURCE = HERE / "ctrlgen_gimp"
CLIENT_SOURCE = HERE.parent / "client.py"
HOSTLOGIC_SOURCE = HERE.parent / "hostlogic.py"  # shared with the Krita plugin
GIMP_SERIES = "3.0"


def gimp_config_dir(home: Path | None = None, platform: str | None = None) -> Path:
    """GIMP 3's per-user folder: ``$GIMP3_DIRECTORY`` when set, else the platform's own; on
    Linux the Flatpak's (``~/.var/app/org.gimp.GIMP/config/GIMP/3.0``) when only that exists."""
    override = os.environ.get("GIMP3_DIRECTORY")
    if override:
        return Path(override).expanduser()
    home = home or Path.home()
    platform = platform or sys.platform
    if platform == "win32":
        return Path(os.environ.get("APPDATA") or home / "AppData" / "Roaming") / "GIMP" / GIMP_SERIES
    if platform == "darwin":
        return home / "Library" / "Application Support" / "GIMP" / GIMP_SERIES
    native = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "GIMP" / GIMP_SERIES
    flatpak = home / ".var" / "app" / "org.gimp.GIMP" / "config" / "GIMP" / GIMP_SERIES
    if not native.exists() and flatpak.exists():
        return flatpak
    return native


def default_plug_ins_dir() -> Path:
    return gimp_config_dir() / "plug-ins"


def check_install(plug_ins_dir: Path) -> list[str]:
    """What would make GIMP ignore the plug-in in ``plug_ins_dir`` (empty: it is in order)."""
    folder = Path(plug_ins_dir) / PLUGIN_NAME
    entry = folder / f"{PLUGIN_NAME}.py"
    problems = []
    strays = sorted(p.name for p in Path(plug_ins_dir).glob(f"{PLUGIN_NAME}*.py")) if Path(plug_ins_dir).is_dir() else []
    if strays:
        problems.append(f"{', '.join(strays)} lies directly in {plug_ins_dir}: GIMP 3 loads only "
                        f"{PLUGIN_NAME}/{PLUGIN_NAME}.py (a folder named as the file)")
    if not folder.is_dir():
        problems.append(f"{folder} does not exist")
        return problems
    if not entry.is_file():
        others = sorted(p.name for p in folder.glob("*.py"))
        named = f" (it holds {', '.join(others)})" if others else ""
        problems.append(f"{entry} is missing{named}: GIMP 3 loads only the file named as its folder")
        return problems
    if os.name == "posix" and not os.access(entry, os.X_OK):
        problems.append(f"{entry} is not executable: GIMP skips it (chmod +x it, or reinstall)")
    if not entry.read_text(encoding="utf-8", errors="replace").startswith("#!"):
        problems.append(f"{entry} has no #! line: GIMP cannot tell which interpreter runs it")
    for needed in ("ctrlgen_gimp/__init__.py", "ctrlgen_gimp/plugin.py", "ctrlgen_gimp/client.py",
                   "ctrlgen_gimp/hostlogic.py"):
        if not (folder / needed).is_file():
            problems.append(f"{folder / needed} is missing: the plug-in cannot start (reinstall)")
    return problems


def install(target: Path | None = None) -> Path:
    """Copy the plug-in into GIMP's plug-ins folder (``target``, default: GIMP's own); returns
    the plug-in's folder. A previous install is replaced; its problems, if any, are reported
    on stderr. Raises CtrlgenError when the result would still be ignored by GIMP."""
    root = Path(target).expanduser() if target else default_plug_ins_dir()
    folder = root / PLUGIN_NAME
    if folder.exists() or any(root.glob(f"{PLUGIN_NAME}*.py")):
        for problem in check_install(root):
            print(f"ctrlgen: the previous install was broken: {problem}; replacing it.", file=sys.stderr)
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".{PLUGIN_NAME}.new"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    shutil.copytree(PACKAGE_SOURCE, staging / "ctrlgen_gimp", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copyfile(CLIENT_SOURCE, staging / "ctrlgen_gimp" / "client.py")
    shutil.copyfile(HOSTLOGIC_SOURCE, staging / "ctrlgen_gimp" / "hostlogic.py")
    entry = staging / f"{PLUGIN_NAME}.py"
    shutil.copyfile(ENTRY_SOURCE, entry)  # a fresh mtime: GIMP queries the plug-in again
    entry.chmod(entry.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)
    for stray in root.glob(f"{PLUGIN_NAME}*.py"):
        stray.unlink()
    problems = check_install(root)
    if problems:
        raise CtrlgenError("the GIMP plug-in was copied but GIMP would ignore it: " + "; ".join(problems))
    return folder


def uninstall(target: Path | None = None) -> list[Path]:
    """Remove the plug-in's folder; returns what was removed."""
    root = Path(target).expanduser() if target else default_plug_ins_dir()
    folder = root / PLUGIN_NAME
    if folder.exists():
        shutil.rmtree(folder)
        return [folder]
    return []


@hookimpl
def ctrlgen_host_bridges():
    yield HostBridgeSpec(name="gimp", install=install, uninstall=uninstall,
                         description="GIMP 3 Python plug-in (Filters > ctrlgen)")
