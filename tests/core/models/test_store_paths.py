"""ModelStore.find with and without file paths (``allow_paths``): what the server lets a client name."""

from __future__ import annotations

import os
import shutil

import pytest

from ctrlgen.core.errors import CtrlgenError, ModelNotFoundError
from ctrlgen.core.models.store import ModelStore, PathNotAllowedError
from ctrlgen.core.plugins.specs import ModelRoot


@pytest.fixture
def outside(tmp_path, tiny_model_root):
    """A real checkpoint file outside every root."""
    copy = tmp_path / "elsewhere" / "copy.safetensors"
    copy.parent.mkdir()
    shutil.copy(tiny_model_root.checkpoints["sd15"], copy)
    return copy


def test_local_stores_take_any_path(tiny_model_root, outside):
    store = ModelStore([ModelRoot(tiny_model_root.root)])
    assert store.allow_paths
    entry = store.find(str(outside), category=("checkpoints",))
    assert entry.path == outside and entry.identity.kind == "checkpoint" and entry.source == "path"


def test_without_paths_names_and_paths_inside_the_roots_still_work(tiny_model_root):
    store = ModelStore([ModelRoot(tiny_model_root.root)], allow_paths=False)
    checkpoint = tiny_model_root.checkpoints["sd15"]
    assert store.find("tiny-sd15", category=("checkpoints",)).path == checkpoint
    assert store.find(str(checkpoint), category=("checkpoints",)).path == checkpoint
    assert store.find(str(checkpoint.absolute()), category=("checkpoints",)).name == "tiny-sd15"


def test_without_paths_a_path_outside_the_roots_is_refused_alike_whether_or_not_it_exists(
        tiny_model_root, outside):
    store = ModelStore([ModelRoot(tiny_model_root.root)], allow_paths=False)
    checkpoint = tiny_model_root.checkpoints["sd15"]
    climbing = str(checkpoint.parent / ".." / ".." / ".." / outside.relative_to(outside.anchor))
    messages = []
    for path in (str(outside), str(outside.with_name("missing.safetensors")), climbing, "C:\\models\\x.safetensors",
                 "\\\\host\\share\\x.safetensors"):
        with pytest.raises(PathNotAllowedError) as info:
            store.find(path, category=("checkpoints",))
        assert isinstance(info.value, CtrlgenError)
        messages.append(str(info.value).replace(repr(path), "PATH"))
    assert len(set(messages)) == 1 and "outside the model folders" in messages[0]


def test_without_paths_a_relative_reference_is_only_a_name(tiny_model_root, outside, monkeypatch):
    monkeypatch.chdir(outside.parent)
    assert os.path.isfile("copy.safetensors")
    local = ModelStore([ModelRoot(tiny_model_root.root)])
    assert local.find("copy.safetensors", category=("checkpoints",)).path.name == "copy.safetensors"
    store = ModelStore([ModelRoot(tiny_model_root.root)], allow_paths=False)
    with pytest.raises(ModelNotFoundError, match="'copy.safetensors' was not found"):
        store.find("copy.safetensors", category=("checkpoints",))


def test_a_name_not_found_rescans_once(tmp_path, tiny_model_root):
    root = tmp_path / "root"
    (root / "models" / "Stable-diffusion").mkdir(parents=True)
    store = ModelStore([ModelRoot(root)], allow_paths=False)
    assert store.scan() == []
    shutil.copy(tiny_model_root.checkpoints["sd15"], root / "models" / "Stable-diffusion" / "added-later.safetensors")
    assert store.find("added-later", category=("checkpoints",)).name == "added-later"


def test_the_engine_switch_reaches_its_store(tiny_model_root):
    from ctrlgen.core.engine.engine import Engine

    store = ModelStore([ModelRoot(tiny_model_root.root)])
    assert Engine(store=store, device="cpu").store.allow_paths
    assert not Engine(store=store, device="cpu", allow_paths=False).store.allow_paths
