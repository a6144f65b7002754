"""Model roots and engines shared by the adapter tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def addon_model_root(tmp_path_factory, tiny_model_cache, tiny_sd15, tiny_sdxl):
    """A tiny A1111 root with the tiny LoRAs (models/Lora) and embeddings (embeddings/).

    Separate from the session's ``tiny_model_root`` so the always-on lora/embeddings adapters
    find nothing in other tests' jobs."""
    from ctrlgen.testing.tiny import write_model_root
    from ctrlgen.testing.tiny_lora import write_tiny_addons

    root = tmp_path_factory.mktemp("a1111-addons")
    placed = write_model_root(root, "a1111", architectures=("sd15", "sdxl"), cache_dir=tiny_model_cache)
    write_tiny_addons(root, tiny_model_cache)
    return placed


@pytest.fixture(scope="session")
def addon_engine(addon_model_root):
    """One engine over ``addon_model_root``; adapters leave its cached pipelines clean."""
    from ctrlgen.core.engine.engine import Engine
    from ctrlgen.core.models.store import ModelStore
    from ctrlgen.core.plugins.specs import ModelRoot

    return Engine(store=ModelStore([ModelRoot(addon_model_root.root)]), device="cpu")


@pytest.fixture(scope="session")
def ip_models(tiny_model_root):
    """The tiny IP-Adapter, InstantID, image-encoder and insightface files, added to ``tiny_model_root``."""
    from ctrlgen.testing.tiny_ip_adapter import add_tiny_ip_adapter_models

    return add_tiny_ip_adapter_models(tiny_model_root)
