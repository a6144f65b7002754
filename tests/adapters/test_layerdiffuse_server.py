"""LayerDiffuse through a real `ctrlgen serve` on loopback: the RGBA result keeps its alpha all the
way to the standard-library client a host plugin uses (raw with 4 channels, and as PNG)."""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ctrlgen.core.engine.engine import Engine
from ctrlgen.core.engine.jobs import parse_job
from ctrlgen.core.models.store import ModelStore
from ctrlgen.core.plugins.specs import ModelRoot
from ctrlgen.host_bridges.client import Client, RawImage

HERE = Path(__file__).resolve().parent


def bridge_helpers():
    """tests/host_bridges/conftest.py's server starter (conftests are not importable by name)."""
    spec = importlib.util.spec_from_file_location("_bridge_conftest", HERE.parent / "host_bridges" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def layer_server(tmp_path_factory, tiny_model_cache, tiny_sd15, tiny_sdxl):
    from ctrlgen.testing.tiny import write_model_root
    from ctrlgen.testing.tiny_layerdiffuse import write_tiny_layerdiffuse

    root = write_model_root(tmp_path_factory.mktemp("layer-server-models"), "a1111", architectures=("sd15", "sdxl"),
                            cache_dir=tiny_model_cache).root
    write_tiny_layerdiffuse(root, tiny_model_cache)
    server = bridge_helpers().start_server(tmp_path_factory.mktemp("layer-server-config"), root)
    try:
        yield server
    finally:
        server.stop()


def job(**use):
    return {"model": "tiny-sdxl", "prompt": "a glass bottle", "seed": 11, "steps": 2, "width": 64, "height": 64,
            "adapters": [{"type": "layerdiffuse", "augment": False, **use}]}


def test_server_lists_the_adapter_and_the_layer_files(layer_server):
    client = Client(layer_server.url, layer_server.token)
    caps = client.capabilities()
    spec = next(a for a in caps["adapters"] if a["name"] == "layerdiffuse")
    params = {p["name"]: p for p in spec["params"]}
    assert set(params) >= {"mode", "method", "weight", "model", "decoder", "encoder", "augment", "foreground_prompt",
                           "background_prompt", "blended_prompt"}
    assert {"joint", "fg_to_bg", "bg_to_fg"} <= set(params["mode"]["choices"])
    layer_files = {m["name"]: m for m in caps["models"] if m.get("kind") == "layerdiffuse"}
    assert {"layer_xl_transparent_attn", "vae_transparent_decoder"} <= set(layer_files)


def test_rgba_result_keeps_its_alpha_through_the_server(layer_server, tmp_path, torch_single_thread):
    client = Client(layer_server.url, layer_server.token)
    rng = np.random.default_rng(1)
    background = RawImage((rng.random((64, 64, 3)) * 255).astype(np.uint8).tobytes(), 64, 64, 3)
    reference = client.upload(background)
    job_id = client.submit(job(mode="bg_blend_to_fg", background=reference, blended=reference))
    final = client.wait(job_id)
    assert final.kind == "finished" and final.data["results"][0]["channels"] == 4
    served = client.result(job_id)
    assert served.channels == 4 and (served.width, served.height) == (64, 64)
    pixels = np.frombuffer(served.data, np.uint8).reshape(64, 64, 4)
    # The same job in this process, from the same files: the same pixels, alpha included.
    picture = tmp_path / "background.png"
    Image.fromarray(np.frombuffer(background.data, np.uint8).reshape(64, 64, 3)).save(picture)
    engine = Engine(store=ModelStore([ModelRoot(layer_server.model_root)]), device="cpu")
    local = engine.run(parse_job(job(mode="bg_blend_to_fg", background=str(picture), blended=str(picture))))
    expected = np.asarray(local.images[0])
    assert np.abs(pixels.astype(int) - expected.astype(int)).max() <= 1
    assert len(np.unique(pixels[..., 3])) > 10  # a matte, not an opaque layer
    # What the Krita plugin makes of it for its new layer (BGRA, Krita's byte order): the same alpha.
    from ctrlgen.host_bridges.krita.ctrlgen_krita.logic import to_bgra

    bgra = np.frombuffer(to_bgra(served.data, served.channels), np.uint8).reshape(64, 64, 4)
    assert np.array_equal(bgra[..., 3], pixels[..., 3]) and np.array_equal(bgra[..., 2::-1], pixels[..., :3])
    # As PNG too (hosts that ask for PNG get an RGBA PNG).
    with Image.open(io.BytesIO(client.result(job_id, format="png"))) as png:
        assert png.mode == "RGBA"
        assert np.array_equal(np.asarray(png), pixels)


def test_a_bad_use_is_refused_before_queueing(layer_server):
    status, answer = layer_server.json("POST", "/v1/jobs", {"job": job(mode="fg_to_blend")})
    assert status == 422
    assert "foreground" in answer["error"]["message"]


def test_joint_layers_come_back_as_three_results_per_seed(layer_server):
    """SD1.5 joint through the server: per seed the transparent foreground (4 channels), then the
    background and the blend (3), in that order (docs/jobs.md)."""
    client = Client(layer_server.url, layer_server.token)
    job_id = client.submit({**job(mode="joint", background_prompt="a wooden table"), "model": "tiny-sd15"})
    final = client.wait(job_id)
    assert final.kind == "finished", final.data
    results = final.data["results"]
    assert [r["channels"] for r in results] == [4, 3, 3]
    assert [r["label"] for r in results] == ["foreground", "background", "blended"]
    assert {r["seed"] for r in results} == {11}
