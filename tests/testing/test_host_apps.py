"""ctrlgen.testing.host_apps: the environment a host application (Krita, GIMP) is launched with."""

from __future__ import annotations

import os
import venv

from ctrlgen.testing.host_apps import clean_host_environment, host_path


def test_an_activated_venv_and_other_pythons_do_not_reach_the_host(tmp_path):
    activated = tmp_path / "project" / ".venv"
    venv.create(activated, symlinks=True, with_pip=False)
    pyenv_shims = tmp_path / "pyenv" / "shims"
    pyenv_shims.mkdir(parents=True)
    (pyenv_shims / "python3").write_text("#!/bin/sh\n")
    (pyenv_shims / "python3").chmod(0o755)
    conda_bin = tmp_path / "conda" / "envs" / "x" / "bin"
    conda_bin.mkdir(parents=True)
    (conda_bin.parent / "conda-meta").mkdir()
    tools = tmp_path / "tools"  # no Python in it: kept
    tools.mkdir()
    path = os.pathsep.join([str(activated / "bin"), str(pyenv_shims), str(conda_bin), str(tools), "/usr/bin",
                            str(tools), "/bin"])
    base = {"PATH": path, "VIRTUAL_ENV": str(activated), "VIRTUAL_ENV_PROMPT": "(.venv) ",
            "PYTHONPATH": "/somewhere", "PYTHONHOME": str(activated), "PYTHONSTARTUP": "/x.py",
            "CONDA_PREFIX": str(conda_bin.parent), "LD_LIBRARY_PATH": "/opt/lib", "QT_PLUGIN_PATH": "/opt/qt",
            "CTRLGEN_MODEL_ROOTS": "/models", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "USER": "me", "TERM": "xterm"}
    env = clean_host_environment({"HOME": "/scratch", "PYTHONPATH": "/host/plugins"}, base=base)
    assert env == {"PATH": os.pathsep.join([str(tools), "/usr/bin", "/bin"]), "LANG": "C.UTF-8",
                   "LC_ALL": "C.UTF-8", "USER": "me", "TERM": "xterm", "HOME": "/scratch",
                   "PYTHONPATH": "/host/plugins"}


def test_system_folders_are_always_there_and_os_environ_is_the_default(monkeypatch):
    assert host_path("") == ["/usr/bin", "/bin"]
    assert host_path("/usr/bin") == ["/usr/bin", "/bin"]
    monkeypatch.setenv("VIRTUAL_ENV", "/some/venv")
    monkeypatch.setenv("PYTHONPATH", "/some/path")
    env = clean_host_environment()
    assert "VIRTUAL_ENV" not in env and "PYTHONPATH" not in env and "/usr/bin" in env["PATH"].split(os.pathsep)
