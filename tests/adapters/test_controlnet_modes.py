"""ControlNet control modes: balanced, My prompt is more important (soft injection), ControlNet is
more important (soft + CFG injection), with sd-webui-controlnet's per-residual scales."""

from __future__ import annotations

import numpy as np
import pytest

from ctrlgen.adapters.controlnet.modes import soft_injection_scales
from ctrlgen.core.errors import ParamError
from ctrlgen.testing.contracts import AdapterContract, contract_image

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("modes") / "photo.png"
    Image.fromarray(contract_image(64, 64)).save(path)
    return str(path)


def _job(photo, architecture="sd15", mode="balanced", **extra):
    unit = {"model": f"tiny-controlnet-{architecture}", "preprocessor": "canny", "weight": 0.9,
            "control_mode": mode}
    return {"model": f"tiny-{architecture}", "prompt": "a cat", "seed": 3, "steps": 2, "width": 64, "height": 64,
            "image": photo, "control": [unit], **extra}


def _run_capturing(engine, job):
    """Run ``job``; return its image and the ControlNet residuals the UNet got at the first step."""
    from ctrlgen.core.engine.jobs import parse_job

    parsed = parse_job(job)
    unet = engine.load_pipeline(engine.resolve_checkpoint(parsed)).unet
    seen = []

    def capture(module, args, kwargs):
        if not seen:
            seen.append([r.clone() for r in kwargs["down_block_additional_residuals"]]
                        + [kwargs["mid_block_additional_residual"].clone()])

    handle = unet.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        result = engine.run(parsed)
    finally:
        handle.remove()
    return np.asarray(result.images[0]), seen[0]


def test_soft_injection_scales_are_sd_webui_controlnets():
    sd15 = soft_injection_scales(13)
    assert sd15[12] == 1.0 and sd15[0] == pytest.approx(0.825**12) and sd15[0] < 0.1
    assert sd15 == [0.825 ** float(12 - i) for i in range(13)]
    # SDXL's 10 residuals take the first ten factors (sd-webui-controlnet: control_scales[:10])
    assert soft_injection_scales(10) == sd15[:10]


@pytest.mark.parametrize("given, canonical", [
    ("balanced", "balanced"), ("Balanced", "balanced"), (0, "balanced"),
    ("prompt", "prompt"), ("My prompt is more important", "prompt"), ("my_prompt_is_more_important", "prompt"),
    (1, "prompt"), ("controlnet", "controlnet"), ("ControlNet is more important", "controlnet"), (2, "controlnet"),
])
def test_control_mode_accepts_sd_webui_names(given, canonical):
    from ctrlgen.core.plugins.manager import get_registry
    from ctrlgen.core.plugins.specs import validate_params

    spec = get_registry("adapters").get("controlnet")
    assert validate_params(spec.params, {"control_mode": given}, "control[0]")["control_mode"] == canonical


def test_unknown_control_mode_is_rejected_with_the_choices():
    from ctrlgen.core.plugins.manager import get_registry
    from ctrlgen.core.plugins.specs import validate_params

    spec = get_registry("adapters").get("controlnet")
    with pytest.raises(ParamError, match="control_mode.*'balanced', 'prompt', 'controlnet'"):
        validate_params(spec.params, {"control_mode": "prompt-first"}, "control[0]")
    with pytest.raises(ParamError):
        validate_params(spec.params, {"control_mode": 3}, "control[0]")


@pytest.mark.parametrize("architecture", ["sd15", "sdxl"])
def test_modes_scale_each_residual_and_cfg_injection_empties_the_negative_half(engine, photo, architecture):
    balanced_image, balanced = _run_capturing(engine, _job(photo, architecture, "balanced"))
    prompt_image, prompt = _run_capturing(engine, _job(photo, architecture, "prompt"))
    control_image, control = _run_capturing(engine, _job(photo, architecture, "controlnet"))

    factors = soft_injection_scales(len(balanced))
    assert len(balanced) == len(prompt) == len(control) == 7  # tiny UNets: 6 down residuals + middle
    for plain, soft, cfg, factor in zip(balanced, prompt, control, factors, strict=True):
        assert plain.shape[0] == 2  # [negative, positive] rows of classifier-free guidance
        assert plain.abs().max() > 0
        # the first step's ControlNet input is the same in every mode: the residuals differ by the factor only
        assert np.array_equal(soft.numpy(), (plain * factor).numpy())
        assert not cfg[0].any(), "ControlNet is more important: no control on the unconditional half"
        assert np.array_equal(cfg[1].numpy(), (plain[1] * factor).numpy())
    assert factors[-1] == pytest.approx(0.825**6) and factors[0] == pytest.approx(0.825**12)

    assert not np.array_equal(balanced_image, prompt_image)
    assert not np.array_equal(prompt_image, control_image)
    assert not np.array_equal(balanced_image, control_image)


def test_without_guidance_controlnet_mode_is_soft_injection_only(engine, photo):
    # cfg_scale 1: no unconditional half to leave out, so the modes' results coincide
    prompt_image, prompt = _run_capturing(engine, _job(photo, mode="prompt", cfg_scale=1.0))
    control_image, control = _run_capturing(engine, _job(photo, mode="controlnet", cfg_scale=1.0))
    assert prompt[0].shape[0] == 1
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(prompt, control, strict=True))
    assert np.array_equal(prompt_image, control_image)


def test_modes_are_per_unit(engine, photo):
    """Two units on the same cached ControlNet: each keeps its own mode (the views are job-local)."""
    job = _job(photo)
    job["control"] = [
        {"model": "tiny-controlnet-sd15", "preprocessor": "canny", "control_mode": "prompt"},
        {"model": "tiny-controlnet-sd15", "preprocessor": "none", "control_mode": "balanced"},
    ]
    mixed, _ = _run_capturing(engine, job)
    job["control"][1]["control_mode"] = "controlnet"
    other, _ = _run_capturing(engine, job)
    assert not np.array_equal(mixed, other)
    model = engine.load_controlnet(engine.store.find("tiny-controlnet-sd15", category=("controlnet",)), "sd15")
    assert "forward" not in vars(model), "the cached ControlNet must keep its own forward"


class TestControlModesContract(AdapterContract):
    """Jobs with soft and CFG injection leave the cached pipeline clean, and a plain job after them
    is bit-identical to a fresh pipeline's."""

    adapter = "controlnet"

    def adapter_job(self, image):
        return {
            "model": "tiny-sd15", "prompt": "a cat", "seed": 1, "steps": 2, "width": 64, "height": 64,
            "image": image,
            "control": [
                {"model": "tiny-controlnet-sd15", "preprocessor": "canny", "control_mode": "prompt"},
                {"model": "tiny-controlnet-sd15", "preprocessor": "none", "control_mode": "ControlNet is more important"},
            ],
        }
