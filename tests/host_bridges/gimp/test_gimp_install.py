"""`ctrlgen install gimp` / `uninstall gimp`: the folder GIMP 3 loads, the executable bit, and the
check that finds a broken install (GIMP itself ignores one without a word). That GIMP then lists
the procedures is test_in_gimp.py's first test (its profile is installed with this command)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ctrlgen.host_bridges import gimp
from ctrlgen.host_bridges.gimp import PLUGIN_NAME, check_install, gimp_config_dir, install, uninstall


def ctrlgen(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ctrlgen.core.cli.main", *args], capture_output=True, text=True,
                          timeout=120)


def test_install_puts_an_executable_file_in_a_folder_named_as_the_file(tmp_path):
    result = ctrlgen("install", "gimp", "--target", str(tmp_path))
    assert result.returncode == 0, result.stderr
    entry = tmp_path / PLUGIN_NAME / f"{PLUGIN_NAME}.py"
    assert entry.is_file() and os.access(entry, os.X_OK)
    assert entry.read_text().startswith("#!/usr/bin/env python3")
    for module in ("plugin.py", "logic.py", "gimpio.py", "dialogs.py", "jobs.py", "watchdog.py", "client.py",
                   "hostlogic.py"):
        assert (tmp_path / PLUGIN_NAME / "ctrlgen_gimp" / module).is_file(), module
    # The client copy is the project's client, byte for byte.
    client = Path(gimp.__file__).parent.parent / "client.py"
    assert (tmp_path / PLUGIN_NAME / "ctrlgen_gimp" / "client.py").read_bytes() == client.read_bytes()
    shared = client.with_name("hostlogic.py")  # the logic shared with the Krita plugin
    assert (tmp_path / PLUGIN_NAME / "ctrlgen_gimp" / "hostlogic.py").read_bytes() == shared.read_bytes()
    assert check_install(tmp_path) == []
    assert str(tmp_path / PLUGIN_NAME) in result.stdout

    result = ctrlgen("uninstall", "gimp", "--target", str(tmp_path))
    assert result.returncode == 0 and not (tmp_path / PLUGIN_NAME).exists()
    assert "nothing removed" in ctrlgen("uninstall", "gimp", "--target", str(tmp_path)).stdout


@pytest.mark.skipif(os.name != "posix", reason="the executable bit is POSIX's")
def test_a_broken_install_is_reported_and_repaired(tmp_path):
    folder = install(tmp_path)
    entry = folder / f"{PLUGIN_NAME}.py"
    entry.chmod(0o644)
    assert check_install(tmp_path) == [f"{entry} is not executable: GIMP skips it (chmod +x it, or reinstall)"]
    result = ctrlgen("install", "gimp", "--target", str(tmp_path))
    assert result.returncode == 0
    assert "the previous install was broken" in result.stderr and "is not executable" in result.stderr
    assert check_install(tmp_path) == []


def test_the_other_mistakes_gimp_ignores_silently(tmp_path):
    # The file straight in plug-ins/ (GIMP 2's habit), and a folder whose file has another name.
    (tmp_path / f"{PLUGIN_NAME}.py").write_text("#!/usr/bin/env python3\n")
    (tmp_path / PLUGIN_NAME).mkdir()
    (tmp_path / PLUGIN_NAME / "ctrlgen_gimp.py").write_text("#!/usr/bin/env python3\n")
    problems = check_install(tmp_path)
    assert any("lies directly in" in problem for problem in problems)
    assert any("is missing (it holds ctrlgen_gimp.py)" in problem for problem in problems)
    install(tmp_path)
    assert check_install(tmp_path) == [] and not (tmp_path / f"{PLUGIN_NAME}.py").exists()
    assert uninstall(tmp_path) == [tmp_path / PLUGIN_NAME] and uninstall(tmp_path) == []


def test_gimp_folders_per_platform(tmp_path, monkeypatch):
    monkeypatch.delenv("GIMP3_DIRECTORY", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("APPDATA", str(tmp_path / "Roaming"))
    assert gimp_config_dir(tmp_path, "win32") == tmp_path / "Roaming" / "GIMP" / "3.0"
    assert gimp_config_dir(tmp_path, "darwin") == tmp_path / "Library" / "Application Support" / "GIMP" / "3.0"
    assert gimp_config_dir(tmp_path, "linux") == tmp_path / ".config" / "GIMP" / "3.0"
    flatpak = tmp_path / ".var" / "app" / "org.gimp.GIMP" / "config" / "GIMP" / "3.0"
    flatpak.mkdir(parents=True)  # only the Flatpak's profile exists: that is the GIMP in use
    assert gimp_config_dir(tmp_path, "linux") == flatpak
    (tmp_path / ".config" / "GIMP" / "3.0").mkdir(parents=True)
    assert gimp_config_dir(tmp_path, "linux") == tmp_path / ".config" / "GIMP" / "3.0"
    monkeypatch.setenv("GIMP3_DIRECTORY", str(tmp_path / "profile"))
    assert gimp_config_dir(tmp_path, "linux") == tmp_path / "profile"


def test_gimp_is_a_host_bridge():
    from ctrlgen.core.plugins.manager import get_registry

    spec = get_registry("host_bridges").get("gimp")
    assert spec.install is install and spec.uninstall is uninstall
