"""`ctrlgen models pull`: the hub itself cannot be reached here, so only the download call is
replaced; what it writes lands in the real HF-cache layout and the real store finds it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ctrlgen.core.cli.main import main
from ctrlgen.core.models.store import ModelStore
from ctrlgen.core.plugins import manager as plugins
from ctrlgen.testing.headers import write_real_model


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    import huggingface_hub

    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    calls = []

    def hf_hub_download(repo_id, filename, revision=None):
        calls.append((repo_id, filename, revision))
        org, name = repo_id.split("/")
        snapshot = cache / f"models--{org}--{name}" / "snapshots" / "0123abcd"
        target = snapshot / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        write_real_model(target, "controlnet", "sd15")
        return str(target)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    plugins.reset()
    yield calls
    plugins.reset()


def test_pull_downloads_into_the_hf_cache_where_the_store_finds_it(fake_hub, capsys):
    assert main(["models", "pull", "lllyasviel/sd-controlnet-canny", "diffusion_pytorch_model.safetensors"]) == 0
    assert fake_hub == [("lllyasviel/sd-controlnet-canny", "diffusion_pytorch_model.safetensors", None)]
    printed = capsys.readouterr().out
    path = Path(printed.split("downloaded ", 1)[1].strip())
    assert path.is_file() and Path(os.environ["HF_HUB_CACHE"]) in path.parents
    entry = ModelStore.from_settings().find("lllyasviel/sd-controlnet-canny", category="controlnet")
    assert entry.identity.kind == "controlnet" and entry.identity.architecture == "sd15"


def test_pull_rejects_bad_repo_ids(capsys):
    assert main(["models", "pull", "not a repo"]) == 2
    assert "is not a Hugging Face repo id; use ORG/NAME" in capsys.readouterr().err


def test_pull_offline_is_a_clear_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import importlib

    import huggingface_hub.constants

    importlib.reload(huggingface_hub.constants)
    try:
        assert main(["models", "pull", "org/name", "model.safetensors"]) == 2
    finally:
        importlib.reload(huggingface_hub.constants)
    assert "HF_HUB_OFFLINE=1" in capsys.readouterr().err
