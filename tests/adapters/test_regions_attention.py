"""Regional prompts: each region's tokens reach only the latents under its mask (attention weights
recorded by a processor on every cross-attention layer), the prompt goes with its mask, the
pipeline is bit-clean after, and bad regions are refused before anything loads."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from ctrlgen.core.engine.jobs import parse_job
from ctrlgen.core.errors import CtrlgenError
from ctrlgen.testing.contracts import AdapterContract

pytestmark = pytest.mark.usefixtures("torch_single_thread")

RED = "a red apple on a table, bright studio light, (red:1.3)"
BLUE = "a blue ocean under the night sky, stars, [blue]"


def _mask(path, box, size=(64, 64)):
    mask = np.zeros((size[1], size[0]), np.uint8)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = 255
    Image.fromarray(mask).save(path)
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from ctrlgen.testing.contracts import contract_image

    folder = tmp_path_factory.mktemp("regions")
    image = folder / "picture.png"
    Image.fromarray(contract_image(64, 64)).save(image)
    return {"image": str(image), "left": _mask(folder / "left.png", (0, 0, 32, 64)),
            "right": _mask(folder / "right.png", (32, 0, 64, 64)),
            "wide": _mask(folder / "wide.png", (0, 0, 40, 64), (80, 64)),
            "empty": _mask(folder / "empty.png", (0, 0, 0, 0)),
            "square": _mask(folder / "square.png", (32, 16, 64, 48))}


def region(mask, prompt, **params):
    return {"type": "region", "mask": mask, "prompt": prompt, **params}


def job(architecture="sd15", **extra):
    return parse_job({"model": f"tiny-{architecture}", "prompt": "a painting", "negative_prompt": "blurry",
                      "seed": 5, "steps": 3, "width": 64, "height": 64, **extra})


class Recorder:
    """Attention processors that record each cross-attention layer's weights (batch·heads, queries, tokens)."""

    def __init__(self, unet):
        from diffusers.models.attention_processor import AttnProcessor

        self.unet, self.records, self.saved = unet, [], {}
        recorder = self

        class Recording(AttnProcessor):
            def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kw):
                original = attn.get_attention_scores

                def scores(query, key, mask=None):
                    probs = original(query, key, mask)
                    recorder.record(probs.detach().clone())
                    return probs

                attn.get_attention_scores = scores
                try:
                    return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kw)
                finally:
                    del attn.get_attention_scores

        self.processor_class = Recording

    def record(self, probs):
        self.records.append(probs)

    def __enter__(self):
        from ctrlgen.adapters.regions.attention import cross_attention_layers

        for layer in cross_attention_layers(self.unet):
            self.saved[layer] = layer.processor
            layer.set_processor(self.processor_class())
        return self

    def __exit__(self, *exc):
        for layer, processor in self.saved.items():
            layer.set_processor(processor)


def _cached(engine, architecture="sd15"):
    engine.run(job(architecture))
    return next(p for key, p in engine._pipelines.items() if f"tiny-{architecture}" in key)


def _masses(probs, groups):
    """Each group's share of the attention, as (batch·heads, h, w, groups) for a square latent."""
    tokens = probs.shape[-1]
    side = math.isqrt(probs.shape[1])
    blocks = probs.reshape(probs.shape[0], side, side, groups, tokens // groups)
    return blocks.sum(-1)


@pytest.mark.parametrize("architecture", ["sd15", "sdxl"])
def test_each_regions_tokens_reach_only_the_latents_under_its_mask(engine, files, architecture):
    base = _cached(engine, architecture)
    uses = [region(files["left"], f"{RED} AND a pear :0.5", feather_px=0),  # a region may hold AND
            region(files["right"], BLUE, negative_prompt="ugly", feather_px=0)]
    with Recorder(base.unet) as recorder:
        engine.run(job(architecture, adapters=uses))
    assert recorder.records
    levels = set()
    for probs in recorder.records:
        masses = _masses(probs, 3)  # root, left, right
        half = masses.shape[2] // 2
        levels.add(masses.shape[1])
        assert (masses[..., 0] > 0).all()  # the root prompt is seen everywhere
        assert (masses[:, :, half:, 1] == 0).all() and (masses[:, :, :half, 1] > 0.01).all()
        assert (masses[:, :, :half, 2] == 0).all() and (masses[:, :, half:, 2] > 0.01).all()
        assert np.allclose(masses.sum(-1), 1.0, atol=1e-5)
    assert len(levels) >= (2 if architecture == "sd15" else 1)  # the tiny SDXL attends at one level


def test_a_feathered_edge_fades_the_regions_weight(engine, files):
    base = _cached(engine)
    with Recorder(base.unet) as recorder:
        engine.run(job(adapters=[region(files["left"], RED, feather_px=8)]))
    finest = max(recorder.records, key=lambda p: p.shape[1])
    left = _masses(finest, 2)[..., 1].mean(dim=(0, 1))  # per latent column (8 of them)
    assert left[4] > 0 and left[4] < left[3] < left[0] + 1e-6  # past the edge it fades ...
    assert left[7] == 0  # ... and is gone beyond the feather's reach


def test_a_grey_mask_gives_the_region_part_of_its_weight(engine, files, tmp_path):
    base = _cached(engine)
    grey = np.zeros((64, 64), np.uint8)
    grey[:, :32] = 64
    Image.fromarray(grey).save(tmp_path / "grey.png")
    finest = {}
    for name, mask in (("white", files["left"]), ("grey", str(tmp_path / "grey.png"))):
        with Recorder(base.unet) as recorder:
            engine.run(job(adapters=[region(mask, RED, feather_px=0)]))
        finest[name] = _masses(max(recorder.records, key=lambda p: p.shape[1]), 2)[..., 1]
    assert (finest["grey"][:, :, :4] > 0).all() and (finest["grey"][:, :, 4:] == 0).all()
    assert (finest["grey"][:, :, :4] < finest["white"][:, :, :4]).all()


def _halves(result):
    pixels = np.asarray(result.images[0], np.float64)
    return pixels[:, :32], pixels[:, 32:]


def test_the_prompt_goes_with_its_mask_and_swapped_prompts_swap_the_halves(engine, files):
    def run(left, right):
        return _halves(engine.run(job(adapters=[region(files["left"], left), region(files["right"], right)])))

    red_left, blue_right = run(RED, BLUE)
    all_red_left, all_red_right = run(RED, RED)
    all_blue_left, all_blue_right = run(BLUE, BLUE)
    blue_left, red_right = run(BLUE, RED)

    def closer(half, same, other):
        return np.abs(half - same).mean() < np.abs(half - other).mean()

    assert closer(red_left, all_red_left, all_blue_left) and closer(blue_right, all_blue_right, all_red_right)
    assert closer(blue_left, all_blue_left, all_red_left) and closer(red_right, all_red_right, all_blue_right)
    # The order of the uses does not matter: each prompt goes with its own mask.
    reordered = engine.run(job(adapters=[region(files["right"], BLUE), region(files["left"], RED)]))
    left, right = _halves(reordered)
    assert np.abs(left - red_left).max() <= 1 and np.abs(right - blue_right).max() <= 1


def test_img2img_and_inpaint_map_the_masks_onto_what_is_generated(engine, files):
    base = _cached(engine)
    uses = [region(files["left"], RED, feather_px=0), region(files["right"], BLUE, feather_px=0)]
    with Recorder(base.unet) as recorder:
        engine.run(job(image=files["image"], strength=0.7, adapters=uses))
    assert (_masses(recorder.records[0], 3)[:, :, 4:, 1] == 0).all()
    # Only-masked inpaint of the right-hand square: the left region lies outside the crop.
    with Recorder(base.unet) as recorder:
        result = engine.run(job(image=files["image"], mask=files["square"], strength=0.8,
                                inpaint={"only_masked": True, "padding_px": 0}, adapters=uses))
    for probs in recorder.records:
        masses = _masses(probs, 3)
        assert (masses[..., 1] == 0).all() and (masses[..., 2] > 0.01).all()
    assert result.images[0].size == (64, 64)


def test_regions_compose_with_a_controlnet_unit_whose_attention_is_masked_too(engine, files):
    from ctrlgen.adapters.regions.attention import cross_attention_layers

    engine.run(job(image=files["image"], control=[{"model": "tiny-controlnet-sd15", "preprocessor": "canny"}]))
    (controlnet,) = engine._controlnets.values()
    with Recorder(controlnet) as recorder:
        engine.run(job(image=files["image"], control=[{"model": "tiny-controlnet-sd15", "preprocessor": "canny"}],
                       adapters=[region(files["left"], RED, feather_px=0)]))
    assert cross_attention_layers(controlnet) and recorder.records
    for probs in recorder.records:
        assert (_masses(probs, 2)[:, :, 4:, 1] == 0).all()


@pytest.mark.parametrize("architecture", ["sd15", "sdxl"])
def test_a_regions_own_controlnet_unit_acts_only_under_its_mask(engine, files, architecture):
    import torch

    base = _cached(engine, architecture)
    seen = []

    def residuals(module, args, kwargs, output):
        seen.append([r.detach().clone() for r in kwargs.get("down_block_additional_residuals") or ()])

    unit = {"model": f"tiny-controlnet-{architecture}", "preprocessor": "canny", "image": files["image"],
            "weight": 1.5}
    handle = base.unet.register_forward_hook(residuals, with_kwargs=True)
    try:
        result = engine.run(job(architecture, adapters=[region(files["left"], RED, feather_px=0, control=[unit])]))
    finally:
        handle.remove()
    assert len(seen) == 3 and all(seen)  # every step
    for step in seen:
        for residual in step:
            half = residual.shape[-1] // 2
            assert torch.count_nonzero(residual[..., half:]) == 0
            assert torch.count_nonzero(residual[..., :half]) > 0
    assert len(result.control_maps) == 1 and result.control_maps[0].shape == (64, 64, 3)  # the canny map


def test_a_regions_units_add_to_the_jobs_own(engine, files):
    import torch

    engine.run(job(image=files["image"], control=[{"model": "tiny-controlnet-sd15", "preprocessor": "canny"}]))
    base = _cached(engine)
    seen = {}

    def residuals(module, args, kwargs, output):
        seen.setdefault("first", [r.detach().clone() for r in kwargs["down_block_additional_residuals"]])

    unit = {"model": "tiny-controlnet-sd15", "preprocessor": "canny", "weight": 1.0}
    runs = {}
    for name, uses in (("job only", []), ("with region", [region(files["left"], RED, feather_px=0, control=[unit])])):
        seen.clear()
        handle = base.unet.register_forward_hook(residuals, with_kwargs=True)
        try:
            engine.run(job(image=files["image"], control=[{"model": "tiny-controlnet-sd15", "preprocessor": "canny"}],
                           adapters=uses or [region(files["left"], RED, feather_px=0)]))
        finally:
            handle.remove()
        runs[name] = seen["first"]
    for alone, both in zip(runs["job only"], runs["with region"], strict=True):
        half = alone.shape[-1] // 2
        assert torch.equal(alone[..., half:], both[..., half:])  # the job's unit alone outside the region
        assert not torch.equal(alone[..., :half], both[..., :half])  # plus the region's inside


@pytest.mark.parametrize(("use", "message"), [
    ({"mask": "wide"}, "adapters[0] (region).mask is 80×64 but the picture is 64×64"),
    ({"mask": "empty"}, "adapters[0] (region).mask selects nothing"),
    ({"prompt": "  "}, "adapters[0] (region).prompt is empty"),
    ({"prompt": "a cat <lora:x:1>"}, "LoRA tags act on the whole picture"),
    ({"control": [{"preprocessor": "canny"}]}, "adapters[0] (region).control[0].model is missing"),
    ({"control": [{"model": "nope", "preprocessor": "canny", "image": "x"}]}, "adapters[0] (region).control[0].model"),
    ({"control": [{"model": "tiny-controlnet-sd15", "preprocessor": "canny"}]},
     "adapters[0] (region).control[0].image is missing"),
    ({"control": [{"model": "tiny-controlnet-sd15", "preprocessor": "canny", "image": "IMAGE",
                   "control_mode": "controlnet"}]}, "a region's units run balanced"),
    ({"control": {"model": "tiny-controlnet-sd15"}}, "must be a list of ControlNet units"),
    ({"ip_adapter": [{"image": "IMAGE"}]}, "adapters[0] (region).ip_adapter[0].model is missing"),
    ({"ip_adapter": [{"model": "x", "image": "IMAGE", "mask": "m.png"}]}, "ip_adapter[0]: drop mask"),
    ({"ip_adapter": {"model": "x"}}, "must be a list of IP-Adapter uses"),
    ({"mask": None}, "adapters[0] (region).mask is missing"),
])
def test_bad_regions_are_refused_before_anything_loads(engine, files, use, message):
    params = {"mask": files["left"], "prompt": RED, **use}
    if isinstance(params["mask"], str) and params["mask"] in files:
        params["mask"] = files[params["mask"]]
    params = {k: v for k, v in params.items() if v is not None}
    for unit in [*(params.get("control") or []), *(params.get("ip_adapter") or [])]:
        if isinstance(unit, dict) and unit.get("image") == "IMAGE":
            unit["image"] = files["image"]
    with pytest.raises(CtrlgenError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        engine.check(job(adapters=[{"type": "region", **params}]))


def test_regions_are_in_the_capabilities_schema(fresh_plugins):
    from ctrlgen.core.plugins.manager import get_registry

    spec = get_registry("adapters").get("region")
    names = [p["name"] for p in spec.to_json()["params"]]
    assert names[:4] == ["mask", "prompt", "negative_prompt", "feather_px"]


class TestRegionContract(AdapterContract):
    """Two regions (one with AND) and a ControlNet unit; the cached pipeline is bit-clean after."""

    adapter = "region"

    def adapter_job(self, image):
        from pathlib import Path

        left = _mask(Path(image).parent / "left.png", (0, 0, 32, 64))
        right = _mask(Path(image).parent / "right.png", (32, 0, 64, 64))
        return {"model": "tiny-sd15", "prompt": "a painting", "seed": 1, "steps": 2, "width": 64, "height": 64,
                "image": image, "control": [{"model": "tiny-controlnet-sd15", "preprocessor": "canny"}],
                "adapters": [region(left, f"{RED} AND a pear :0.5"),
                             region(right, BLUE, control=[{"model": "tiny-controlnet-sd15", "preprocessor": "canny",
                                                           "image": image}])]}


class TestRegionContractSDXL(AdapterContract):
    adapter = "region"

    def adapter_job(self, image):
        from pathlib import Path

        left = _mask(Path(image).parent / "left.png", (0, 0, 32, 64))
        return {"model": "tiny-sdxl", "prompt": "a painting AND fog :0.3", "seed": 1, "steps": 2, "width": 64,
                "height": 64, "adapters": [region(left, RED)]}


def test_a_job_files_relative_paths_reach_a_regions_own_units(tmp_path, files):
    import json
    import shutil

    from ctrlgen.core.engine.jobs import load_job

    shutil.copy(files["left"], tmp_path / "left.png")
    shutil.copy(files["image"], tmp_path / "pose.png")
    (tmp_path / "job.json").write_text(json.dumps({
        "model": "tiny-sd15", "prompt": "a painting",
        "adapters": [region("left.png", RED, control=[{"model": "tiny-controlnet-sd15", "image": "pose.png"}])]}))
    (use,) = load_job(tmp_path / "job.json").adapters
    assert use.params()["mask"] == str(tmp_path / "left.png")
    assert use.params()["control"][0]["image"] == str(tmp_path / "pose.png")
