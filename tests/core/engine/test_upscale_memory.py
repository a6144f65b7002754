"""Memory follows the tile, not the canvas: peak RSS of upscale jobs in fresh processes (not a timing);
and a 4096² upscale runs on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_single_thread")]

SCRIPT = Path(__file__).with_name("_upscale_rss.py")


@pytest.fixture(scope="module")
def root(tmp_path_factory, tiny_model_cache, tiny_sd15):
    from ctrlgen.testing.tiny import write_model_root
    from ctrlgen.testing.tiny_upscalers import write_tiny_upscaler

    made = write_model_root(tmp_path_factory.mktemp("upscale-memory-root"), "a1111", architectures=("sd15",),
                            cache_dir=tiny_model_cache)
    write_tiny_upscaler(made.models_dir / "ESRGAN", "compact", scale=4, name="4x-compact")
    return made


def growth_mib(root, side: int, tile: int) -> float:
    done = subprocess.run([sys.executable, str(SCRIPT), str(root.root), str(side), str(tile)], capture_output=True,
                          text=True, timeout=900, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])["growth_mib"]


@pytest.mark.timeout(1800)
def test_peak_memory_grows_with_the_tile_not_the_canvas(root):
    small = growth_mib(root, 512, 128)  # 512² canvas, 128-pixel tiles
    bigger_canvas = growth_mib(root, 1024, 128)  # 4× the canvas, same tiles
    bigger_tile = growth_mib(root, 512, 512)  # same canvas, one 16× larger tile
    per_canvas_pixel = (bigger_canvas - small) * 2**20 / (1024**2 - 512**2)
    per_tile_pixel = (bigger_tile - small) * 2**20 / (512**2 - 128**2)
    # A canvas pixel costs only its image buffers (uint8 and float copies of the picture on the
    # way in and out); a tile pixel costs the UNet's and the VAE's working memory.
    assert per_canvas_pixel < 200, (small, bigger_canvas, bigger_tile)
    assert per_tile_pixel > 2 * per_canvas_pixel, (small, bigger_canvas, bigger_tile)


@pytest.mark.timeout(1800)
def test_a_4096_square_upscale_runs_on_the_cpu(root, tmp_path):
    from ctrlgen.core.engine.engine import Engine
    from ctrlgen.core.engine.jobs import parse_job
    from ctrlgen.core.models.store import ModelStore
    from ctrlgen.core.plugins.specs import ModelRoot

    picture = np.zeros((1024, 1024, 3), np.uint8)
    picture[..., 0] = np.linspace(0, 255, 1024, dtype=np.uint8)[None, :]
    picture[..., 2] = np.linspace(0, 255, 1024, dtype=np.uint8)[:, None]
    Image.fromarray(picture).save(tmp_path / "in.png")
    engine = Engine(store=ModelStore([ModelRoot(root.root)]), device="cpu")
    pipeline = engine.load_pipeline(engine.store.find("tiny-sd15"))
    seen = []
    hook = pipeline.unet.conv_in.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape)))
    try:
        result = engine.run(parse_job({
            "task": "upscale", "model": "tiny-sd15", "image": str(tmp_path / "in.png"), "steps": 2, "seed": 1,
            "cfg_scale": 1, "sampler": "Euler",
            "upscale": {"upscaler": "4x-compact", "scale": 4, "tile_size": 256, "overlap": 32, "denoise": 0.5}}))
    finally:
        hook.remove()
    image = result.images[0]
    assert image.size == (4096, 4096)
    # One step over 19×19 tiles of 256 pixels (starts 224 apart). 256-pixel tiles rather than the
    # model's 512: the tiny UNet's self-attention at 64² latents was three quarters of this test's time.
    assert set(seen) == {(1, 4, 32, 32)} and len(seen) == 19 * 19
    assert np.asarray(image).std() > 0
