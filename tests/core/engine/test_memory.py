"""Fitting jobs into memory: the automatic plan, its overrides, and applying it to a job."""

from __future__ import annotations

import numpy as np
import pytest

from ctrlgen.core.engine.engine import Engine
from ctrlgen.core.engine.jobs import parse_job
from ctrlgen.core.engine.memory import GIB, MemoryPlan, applied, plan_memory, weight_bytes
from ctrlgen.core.errors import CtrlgenError
from ctrlgen.core.models.store import ModelStore
from ctrlgen.core.plugins.specs import ModelRoot

# Real sizes in fp16: SDXL ~6.9 GB of weights, its UNet 5.1 GB; SD1.5 ~2.1 GB, UNet 1.7 GB.
SDXL = dict(weights=int(6.9 * GIB), largest=int(5.1 * GIB))
SD15 = dict(weights=int(2.1 * GIB), largest=int(1.7 * GIB))


def plan(free_gib, model=SDXL, size=1024, batch=1, memory="auto", vae_tiling="auto", device="cuda", resident=False):
    return plan_memory(memory=memory, vae_tiling=vae_tiling, device=device, free=int(free_gib * GIB),
                       width=size, height=size, batch=batch, dtype_bytes=2, resident=resident, **model)


@pytest.mark.parametrize(
    ("free_gib", "model", "size", "offload"),
    [
        (22.0, SDXL, 1024, "none"),        # a 24 GB card
        (7.4, SDXL, 1024, "model"),        # an 8 GB card: SDXL's UNet fits, the whole pipeline does not
        (5.6, SDXL, 1024, "sequential"),   # a 6 GB card: not even the UNet with its working memory
        (5.6, SD15, 512, "none"),          # SD1.5 fits a 6 GB card
        (2.5, SD15, 512, "model"),
        (2.5, SD15, 1536, "sequential"),   # the same card, a much bigger picture
    ],
)
def test_offload_is_chosen_from_free_memory_and_model_size(free_gib, model, size, offload):
    chosen = plan(free_gib, model, size=size)
    assert chosen.offload == offload
    assert "GiB" in chosen.reason


def test_vae_tiling_and_slicing_follow_the_decode_size():
    assert not plan(22.0, size=1024).vae_tiling
    big = plan(22.0, size=4096)  # a 4096² decode needs far more than what is left
    assert big.vae_tiling
    batch = plan(10.0, SD15, size=768, batch=8)
    assert batch.vae_slicing and not batch.vae_tiling  # one image fits, eight at once do not
    assert not plan(22.0, SD15, size=512, batch=2).vae_slicing


def test_overrides_win_and_the_cpu_never_offloads():
    assert plan(22.0, memory="model_offload").offload == "model"
    assert plan(22.0, memory="sequential_offload").offload == "sequential"
    assert plan(2.0, memory="none").offload == "none"
    assert plan(2.0, device="cpu").offload == "none"
    assert plan(22.0, vae_tiling="on").vae_tiling and not plan(0.5, SD15, vae_tiling="off").vae_tiling
    assert plan(1.0, resident=True).offload == "none"  # weights already on the device stay there
    with pytest.raises(CtrlgenError, match="unknown memory mode 'low'; use one of auto, none"):
        plan(8.0, memory="low")
    with pytest.raises(CtrlgenError, match="unknown vae_tiling 'yes'"):
        plan(8.0, vae_tiling="yes")


def test_settings_choose_the_modes(monkeypatch, tmp_path):
    monkeypatch.setenv("CTRLGEN_CONFIG_DIR", str(tmp_path))
    (tmp_path / "config.toml").write_text('memory = "model_offload"\nvae_tiling = "on"\nprecision = "bfloat16"\n')
    engine = Engine(store=ModelStore([]), device="cpu")
    assert (engine.memory, engine.vae_tiling, engine._precision) == ("model_offload", "on", "bfloat16")
    monkeypatch.setenv("CTRLGEN_MEMORY", "none")
    assert Engine(store=ModelStore([])).memory == "none"
    with pytest.raises(CtrlgenError, match="unknown memory mode"):
        Engine(store=ModelStore([]), memory="half")


def job(**extra):
    return parse_job({"model": "tiny-sd15", "prompt": "a cat", "seed": 3, "steps": 2, "width": 128, "height": 128}
                     | extra)


def test_vae_tiling_runs_the_decoder_in_tiles_and_is_undone(engine, tiny_model_root, torch_single_thread):
    plain = engine.run(job())
    assert plain.memory.offload == "none" and not plain.memory.vae_tiling  # CPU, 128 px: nothing needed
    vae = next(iter(engine._pipelines.values())).vae
    calls = []
    handle = vae.decoder.register_forward_hook(lambda *args: calls.append(1))
    try:
        tiled_engine = Engine(store=engine.store, device="cpu", vae_tiling="on")
        tiled_engine._pipelines = engine._pipelines  # same cached pipeline
        calls.clear()
        engine.run(job())
        untiled_calls = len(calls)
        calls.clear()
        tiled = tiled_engine.run(job())
        tiled_calls = len(calls)
    finally:
        handle.remove()
    assert tiled.memory.vae_tiling and untiled_calls == 1 and tiled_calls > 1
    assert vae.use_tiling is False  # the shared VAE is put back
    difference = np.abs(np.asarray(tiled.images[0], int) - np.asarray(plain.images[0], int))
    assert difference.mean() < 40  # the same picture, decoded in blended tiles
    assert np.array_equal(np.asarray(engine.run(job()).images[0]), np.asarray(plain.images[0]))


def test_model_offload_hooks_are_removed_and_models_return_home(engine, torch_single_thread):
    # CPU→CPU offload runs the real accelerate hooks; on a GPU the same code moves weights.
    base = next(iter(engine._pipelines.values()))
    expected = np.asarray(engine.run(job()).images[0])
    from diffusers import StableDiffusionPipeline

    view = StableDiffusionPipeline.from_pipe(base)
    view.set_progress_bar_config(disable=True)
    with applied(view, MemoryPlan("model", False, False, "test"), "cpu"):
        assert hasattr(base.unet, "_hf_hook")  # hooked for the job
        import torch

        images = view("a cat", num_inference_steps=2, width=128, height=128, output_type="np",
                      generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 128, 128, 3)
    assert not hasattr(base.unet, "_hf_hook") and not hasattr(base.text_encoder, "_hf_hook")
    assert np.array_equal(np.asarray(engine.run(job()).images[0]), expected)  # the cache is as it was


def test_weight_bytes_counts_every_model(engine):
    base = engine.load_pipeline(engine.store.find("tiny-sd15"))  # cached if an earlier test loaded it
    total, largest = weight_bytes(base)
    unet = sum(p.numel() * 4 for p in base.unet.parameters())
    assert total > largest >= unet > 0


@pytest.mark.gpu
def test_offloaded_jobs_match_resident_ones_on_a_gpu(tiny_model_root):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    store = ModelStore([ModelRoot(tiny_model_root.root)])
    resident = Engine(store=store, device="cuda", memory="none").run(job())
    for mode in ("model_offload", "sequential_offload"):
        engine = Engine(store=store, device="cuda", memory=mode)
        before = torch.cuda.memory_allocated()
        result = engine.run(job())
        assert result.memory.offload == mode.split("_")[0]
        assert np.abs(np.asarray(result.images[0], int) - np.asarray(resident.images[0], int)).max() <= 2
        assert torch.cuda.memory_allocated() <= before + 16 * 2**20  # weights went back to RAM


@pytest.mark.gpu
def test_free_memory_counts_a_per_process_cap():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from ctrlgen.core.engine.memory import free_memory

    total = torch.cuda.mem_get_info()[1]
    torch.cuda.set_per_process_memory_fraction(0.05)
    try:
        assert free_memory("cuda") <= int(total * 0.05)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert free_memory("cuda") > int(total * 0.05)
