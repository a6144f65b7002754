"""Launching a host application (Krita, GIMP, ...) from a test, in a clean environment.

A host with an embedded Python (Krita's ``kritarunner``, GIMP's Python plug-ins) must not
inherit the test runner's Python: with a virtual environment activated in the shell, its
``VIRTUAL_ENV``, ``PYTHONPATH``/``PYTHONHOME`` and the venv's ``bin`` first on ``PATH`` make
the embedded interpreter take the venv (or pyenv, conda) Python as its home — whose
standard library and site-packages are not the system ones the host was built with — and
Krita then stops with ``No module named 'PyQt5'``. (The embedded interpreter looks for
``python3`` on ``PATH`` to find its home, so a folder holding another Python is enough.)

:func:`clean_host_environment` builds the environment to launch such a host with: only
locale, user and terminal variables are inherited, ``PATH`` without folders that hold another
Python, and nothing else unless the caller adds it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

# Inherited as they are: they describe the user and the terminal, not a Python.
KEPT_VARIABLES = ("LANG", "LANGUAGE", "TZ", "USER", "LOGNAME", "TERM")
SYSTEM_BIN = ("/usr/bin", "/bin")
_PYTHON_NAMES = ("python3", "python")


def clean_host_environment(overrides: Mapping[str, str] | None = None, *,
                           base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment to launch a host application with: ``base`` (default ``os.environ``)
    reduced to :data:`KEPT_VARIABLES` and ``LC_*``, a ``PATH`` from which every folder holding
    another Python (a virtual environment's or conda's ``bin``, pyenv's shims and versions,
    ``/usr/local/bin`` with a self-built ``python3``) is dropped, then ``overrides`` on top
    (``HOME``, ``XDG_*``, the ``PYTHONPATH`` the host's own Python should see, ...).
    """
    base = os.environ if base is None else base
    env = {key: value for key, value in base.items() if key in KEPT_VARIABLES or key.startswith("LC_")}
    env["PATH"] = os.pathsep.join(host_path(base.get("PATH", "")))
    env.update(overrides or {})
    return env


def host_path(path: str) -> list[str]:
    """``path``'s folders without those holding a Python other than the system's (kept in
    order, without duplicates; ``/usr/bin`` and ``/bin`` always present)."""
    folders: list[str] = []
    for folder in path.split(os.pathsep):
        if folder and folder not in folders and (folder in SYSTEM_BIN or not _holds_python(Path(folder))):
            folders.append(folder)
    folders += [folder for folder in SYSTEM_BIN if folder not in folders]
    return folders


def _holds_python(folder: Path) -> bool:
    if (folder.parent / "pyvenv.cfg").is_file() or (folder.parent / "conda-meta").is_dir():
        return True
    return any(os.access(folder / name, os.X_OK) and (folder / name).is_file() for name in _PYTHON_NAMES)
