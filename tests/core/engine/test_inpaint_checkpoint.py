"""Inpainting checkpoints (9-channel UNets): identified by the store, run by the engine."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ctrlgen.core.engine.engine import Engine
from ctrlgen.core.engine.jobs import parse_job
from ctrlgen.core.engine.masks import feather, prepare_mask
from ctrlgen.core.errors import JobError
from ctrlgen.core.models.store import ModelStore
from ctrlgen.core.plugins.specs import ModelRoot

pytestmark = pytest.mark.usefixtures("torch_single_thread")

FEATHER = 4


@pytest.fixture(scope="module")
def inpaint_root(tmp_path_factory, tiny_model_cache, tiny_sd15, tiny_sdxl):
    from ctrlgen.testing.tiny import write_model_root
    from ctrlgen.testing.tiny_inpaint import add_inpaint_models

    root = write_model_root(tmp_path_factory.mktemp("inpaint-root"), "a1111", architectures=("sd15", "sdxl"),
                            cache_dir=tiny_model_cache)
    add_inpaint_models(root, ("sd15", "sdxl"), cache_dir=tiny_model_cache)
    return root


@pytest.fixture(scope="module")
def folders(tiny_model_cache):
    """The diffusers folders of the tiny inpainting checkpoints (jobs name them by path)."""
    from ctrlgen.testing.tiny_inpaint import write_tiny_inpaint

    return {arch: str(write_tiny_inpaint(tiny_model_cache, arch).pipeline_dir) for arch in ("sd15", "sdxl")}


@pytest.fixture(scope="module")
def engine(inpaint_root):
    return Engine(store=ModelStore([ModelRoot(inpaint_root.root)]), device="cpu")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from skimage import data

    folder = tmp_path_factory.mktemp("inpaint-checkpoint-inputs")
    photo = np.asarray(Image.fromarray(data.astronaut()).resize((80, 72)))
    Image.fromarray(photo).save(folder / "photo.png")
    mask = np.zeros((72, 80), np.uint8)
    mask[16:52, 20:60] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    alpha = feather(prepare_mask(mask), FEATHER)
    return {"photo": str(folder / "photo.png"), "mask": str(folder / "mask.png"), "pixels": photo,
            "outside": alpha == 0, "inside": alpha > 0.99}


def run(engine, files, **fields):
    job = {"model": "tiny-sd15-inpainting", "prompt": "a cat", "seed": 4, "steps": 4, "width": 64, "height": 64,
           "image": files["photo"], "mask": files["mask"], "strength": 1.0, "inpaint": {"feather_px": FEATHER},
           **fields}
    return np.asarray(engine.run(parse_job(job)).images[0])


def test_the_store_identifies_inpainting_checkpoints(engine, tiny_model_cache, tmp_path):
    from ctrlgen.testing.tiny import write_model_root
    from ctrlgen.testing.tiny_inpaint import add_inpaint_models

    comfyui = write_model_root(tmp_path, "comfyui", cache_dir=tiny_model_cache)
    add_inpaint_models(comfyui, ("sd15", "sdxl"), cache_dir=tiny_model_cache)
    comfyui_store = ModelStore([ModelRoot(comfyui.root)])
    for name, architecture in (("tiny-sd15-inpainting", "sd15"), ("tiny-sdxl-inpainting", "sdxl")):
        entries = [engine.store.find(name), comfyui_store.find(name, category=("checkpoints",)),
                   comfyui_store.find(name, category=("diffusers",))]
        assert [e.path.is_dir() for e in entries] == [False, False, True]
        for entry in entries:
            assert (entry.identity.architecture, entry.identity.variant) == (architecture, "inpaint"), entry.path
            assert entry.identity.details["in_channels"] == 9
    assert engine.store.find("tiny-sd15").identity.variant == ""


class UNetInputs:
    """Records the channel count of every UNet call of a pipeline."""

    def __init__(self, unet):
        self.channels: list[int] = []
        self.handle = unet.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        self.channels.append(sample.shape[1])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.parametrize("model", ["tiny-sd15-inpainting", "sdxl-folder"])
def test_an_inpaint_job_runs_on_the_9_channel_unet(engine, files, folders, model):
    model = folders["sdxl"] if model == "sdxl-folder" else model  # a single file, and a diffusers folder
    unet = engine.load_pipeline(engine.store.find(model)).unet
    with UNetInputs(unet) as calls:
        result = run(engine, files, model=model)
    assert calls.channels and set(calls.channels) == {9}  # latents + mask + masked-image latents
    original, outside, inside = files["pixels"], files["outside"], files["inside"]
    assert result.shape == original.shape
    assert np.array_equal(result[outside], original[outside])
    assert np.abs(result[inside].astype(int) - original[inside].astype(int)).mean() > 5
    assert np.array_equal(result, run(engine, files, model=model))
    assert not np.array_equal(result, run(engine, files, model=model, seed=5))


def test_the_masked_image_conditions_the_9_channel_unet(engine, files, tmp_path):
    # Same mask, different picture outside it: only a UNet that sees the masked image (its
    # extra channels) paints the masked area differently, at strength 1 from the same noise.
    other = files["pixels"][::-1].copy()
    Image.fromarray(other).save(tmp_path / "other.png")
    inside = files["inside"]
    first = run(engine, files)
    second = run(engine, files, image=str(tmp_path / "other.png"))
    assert not np.array_equal(first[inside], second[inside])


def test_single_file_and_diffusers_folder_give_the_same_image(engine, files, folders):
    assert np.array_equal(run(engine, files), run(engine, files, model=folders["sd15"]))


def test_inpainting_checkpoints_with_options_and_a_controlnet(engine, files):
    original, outside = files["pixels"], files["outside"]
    control = [{"model": "tiny-controlnet-sd15", "preprocessor": "canny"}]
    for fields in ({"control": control},
                   {"inpaint": {"feather_px": FEATHER, "only_masked": True, "padding_px": 8}},
                   {"strength": 0.7, "inpaint": {"feather_px": FEATHER, "fill": "latent_nothing"}}):
        result = run(engine, files, **fields)
        assert np.array_equal(result[outside], original[outside]), fields
        assert not np.array_equal(result, run(engine, files)), fields


@pytest.mark.parametrize("fields", [{"task": "txt2img"}, {"task": "img2img"}])
def test_other_tasks_on_an_inpainting_checkpoint_are_refused(engine, files, fields):
    job = {"model": "tiny-sd15-inpainting", "prompt": "a cat", "steps": 2, "width": 64, "height": 64, **fields}
    if fields["task"] == "img2img":
        job["image"] = files["photo"]
    with pytest.raises(JobError, match=r"is an inpainting checkpoint \(9-channel UNet\); it can only inpaint"):
        engine.run(parse_job(job))


def test_tiny_inpaint_writer_is_idempotent(tiny_model_cache):
    from ctrlgen.testing.tiny_inpaint import write_tiny_inpaint

    first = write_tiny_inpaint(tiny_model_cache, "sd15")
    stamp = first.checkpoint.stat().st_mtime_ns
    again = write_tiny_inpaint(tiny_model_cache, "sd15")
    assert again == first and again.checkpoint.stat().st_mtime_ns == stamp
    assert first.checkpoint.with_name("tiny-sd15-inpainting.config.json").is_file()
    with pytest.raises(ValueError, match="no tiny inpainting model for 'sd3'"):
        write_tiny_inpaint(tiny_model_cache, "sd3")
