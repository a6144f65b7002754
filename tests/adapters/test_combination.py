"""Everything in one job: an inpaint job with two ControlNet units, an IP-Adapter and
reference-only, on SD1.5 and SDXL — each part steers, the result is seeded, the pixels
outside the mask are the original's, and the cached pipeline is clean afterwards."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ctrlgen.core.engine.engine import Engine
from ctrlgen.core.engine.jobs import parse_job
from ctrlgen.core.engine.masks import feather, prepare_mask
from ctrlgen.core.models.store import ModelStore
from ctrlgen.core.plugins.specs import ModelRoot

pytestmark = pytest.mark.usefixtures("torch_single_thread")

CHECKPOINTS = {"sd15": ("tiny-sd15", "tiny-controlnet-sd15", "tiny-ip-adapter-plus_sd15"),
               "sdxl": ("tiny-sdxl", "tiny-controlnet-sdxl", "tiny-ip-adapter_sdxl")}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from skimage import data

    folder = tmp_path_factory.mktemp("combination")
    photo = np.asarray(Image.fromarray(data.astronaut()).resize((96, 96)))
    mask = np.zeros((96, 96), np.uint8)
    mask[24:72, 30:70] = 255
    paths = {"photo": folder / "photo.png", "mask": folder / "mask.png", "cat": folder / "cat.png",
             "style": folder / "style.png"}
    Image.fromarray(photo).save(paths["photo"])
    Image.fromarray(mask).save(paths["mask"])
    Image.fromarray(data.chelsea()).resize((96, 96)).save(paths["cat"])
    Image.fromarray(data.coffee()).resize((96, 96)).save(paths["style"])
    return {name: str(path) for name, path in paths.items()} | {"photo_pixels": photo, "mask_pixels": mask}


@pytest.fixture(scope="module")
def engine(tiny_model_root, ip_models):
    return Engine(store=ModelStore([ModelRoot(tiny_model_root.root)]), device="cpu")


def combined(files, arch, drop=None, **extra):
    checkpoint, controlnet, ip_adapter = CHECKPOINTS[arch]
    job = {
        "model": checkpoint, "prompt": "an astronaut holding a cat", "negative_prompt": "blurry",
        "seed": 11, "steps": 3, "width": 96, "height": 96, "sampler": "DPM++ 2M",
        "image": files["photo"], "mask": files["mask"], "strength": 0.9,
        "inpaint": {"grow_px": 2, "feather_px": 3},
        "control": [
            {"model": controlnet, "preprocessor": "canny", "weight": 0.8},
            {"model": controlnet, "preprocessor": "shuffle", "weight": 0.6, "guidance_end": 0.7},
        ],
        "adapters": [
            {"type": "ip_adapter", "model": ip_adapter, "image": files["cat"], "scale": 0.8},
            {"type": "reference", "image": files["style"], "mode": "reference_adain+attn"},
        ],
    }
    if drop == "control":
        job["control"] = job["control"][:1]
    elif drop in ("ip_adapter", "reference"):
        job["adapters"] = [a for a in job["adapters"] if a["type"] != drop]
    return parse_job(job | extra)


def pixels(result):
    return np.asarray(result.images[0]).astype(np.int16)


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_two_controlnets_ip_adapter_and_reference_in_one_inpaint_job(engine, files, arch, tiny_model_root):
    events = []
    result = engine.run(combined(files, arch), on_event=events.append)
    image = pixels(result)
    assert image.shape == (96, 96, 3)
    assert [e.kind for e in events][0] == "started" and events[-1].kind == "finished"
    assert len(result.control_maps) == 2

    # Outside the grown, feathered mask every pixel is the original's, bit for bit.
    alpha = feather(prepare_mask(files["mask_pixels"], 2, False), 3)
    outside = alpha == 0
    assert outside.sum() > 4000
    assert np.array_equal(image[outside], files["photo_pixels"][outside].astype(np.int16))
    inside = alpha >= 0.999
    assert np.abs(image[inside] - files["photo_pixels"][inside]).mean() > 3  # the masked part was repainted

    # Seeded, and every part steers the masked area.
    assert np.array_equal(pixels(engine.run(combined(files, arch))), image)
    for part in ("control", "ip_adapter", "reference"):
        without = pixels(engine.run(combined(files, arch, drop=part)))
        assert not np.array_equal(without[inside], image[inside]), f"dropping {part} changed nothing"
        assert np.array_equal(without[outside], image[outside])

    # The cached pipeline is as it was: a plain job equals a fresh engine's.
    plain = {"model": CHECKPOINTS[arch][0], "prompt": "a cat", "seed": 3, "steps": 2, "width": 64, "height": 64}
    after = pixels(engine.run(parse_job(plain)))
    fresh = Engine(store=ModelStore([ModelRoot(tiny_model_root.root)]), device="cpu")
    assert np.array_equal(after, pixels(fresh.run(parse_job(plain))))
