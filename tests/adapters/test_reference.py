"""reference-only / reference_adain / reference_adain+attn on the tiny models, and their restoration."""

from __future__ import annotations

import numpy as np
import pytest

from ctrlgen.core.engine.engine import Engine
from ctrlgen.core.engine.jobs import parse_job
from ctrlgen.core.errors import JobError, ParamError
from ctrlgen.core.models.store import ModelStore
from ctrlgen.core.plugins.specs import ModelRoot
from ctrlgen.testing.contracts import AdapterContract, contract_image, pipeline_fingerprint

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from PIL import Image
    from skimage import data

    folder = tmp_path_factory.mktemp("reference-images")
    paths = {"astronaut": folder / "astronaut.png", "card": folder / "card.png"}
    Image.fromarray(data.astronaut()).resize((96, 80)).save(paths["astronaut"])
    Image.fromarray(contract_image(64, 64)).save(paths["card"])
    return {name: str(path) for name, path in paths.items()}


def job(architecture="sd15", **extra):
    return parse_job({"model": f"tiny-{architecture}", "prompt": "a cat", "negative_prompt": "blurry", "seed": 5,
                      "steps": 3, "width": 64, "height": 64, **extra})


def reference(image, **params):
    return {"type": "reference", "image": image, **params}


def cached_pipeline(engine, architecture="sd15"):
    request = job(architecture)
    return engine.load_pipeline(engine.resolve_checkpoint(request))


def run(engine, **extra):
    return np.asarray(engine.run(job(**extra)).images[0]).astype(np.int16)


class TestReferenceContract(AdapterContract):
    """Reference + a ControlNet unit in one job; then a plain job is bit-identical to a fresh pipeline's."""

    adapter = "reference"

    def adapter_job(self, image):
        return {"model": "tiny-sd15", "prompt": "a cat", "seed": 1, "steps": 2, "width": 64, "height": 64,
                "image": image, "control": [{"model": "tiny-controlnet-sd15", "preprocessor": "canny"}],
                "adapters": [{"type": "reference", "image": image, "mode": "reference_adain+attn"}]}


class TestReferenceContractSDXL(AdapterContract):
    adapter = "reference"

    def adapter_job(self, image):
        return {"model": "tiny-sdxl", "prompt": "a cat", "seed": 1, "steps": 2, "width": 64, "height": 64,
                "adapters": [{"type": "reference", "image": image, "mode": "reference_only", "weight": 1.5}]}


@pytest.mark.parametrize("architecture", ["sd15", "sdxl"])
@pytest.mark.parametrize("mode", ["reference_only", "reference_adain", "reference_adain+attn"])
def test_each_mode_changes_the_image_and_weight_zero_does_not(engine, images, architecture, mode):
    plain = run(engine, architecture=architecture)
    referenced = run(engine, architecture=architecture, adapters=[reference(images["astronaut"], mode=mode)])
    assert np.abs(referenced - plain).mean() > 0.5
    off = run(engine, architecture=architecture, adapters=[reference(images["astronaut"], mode=mode, weight=0)])
    assert np.array_equal(off, plain)


def test_reference_is_deterministic_and_follows_its_image(engine, images):
    uses = [reference(images["astronaut"], mode="reference_adain+attn")]
    first, second = run(engine, adapters=uses), run(engine, adapters=uses)
    assert np.array_equal(first, second)
    other = run(engine, adapters=[reference(images["card"], mode="reference_adain+attn")])
    assert np.abs(other - first).mean() > 0.5


def test_style_fidelity_weight_and_guidance_range_matter(engine, images):
    image = images["astronaut"]
    results = {
        "default": run(engine, adapters=[reference(image)]),
        "fidelity0": run(engine, adapters=[reference(image, style_fidelity=0.0)]),
        "fidelity1": run(engine, adapters=[reference(image, style_fidelity=1.0)]),
        "prompt_mode": run(engine, adapters=[reference(image, control_mode="my_prompt_is_more_important")]),
        "half": run(engine, adapters=[reference(image, weight=0.5)]),
        "first_step": run(engine, adapters=[reference(image, guidance_end=0.2)]),
        "late": run(engine, adapters=[reference(image, guidance_start=0.9)]),
        "plain": run(engine),
    }
    # my_prompt_is_more_important is style_fidelity 0, as in sd-webui-controlnet
    assert np.array_equal(results["prompt_mode"], results["fidelity0"])
    distinct = ["default", "fidelity0", "fidelity1", "half", "first_step", "plain"]
    for index, name in enumerate(distinct):
        for other in distinct[index + 1:]:
            assert not np.array_equal(results[name], results[other]), (name, other)
    # guidance_start 0.9 of 3 steps: progress 0, 1/3, 2/3 never reaches it
    assert np.array_equal(results["late"], results["plain"])


def test_two_references_combine(engine, images):
    one = run(engine, adapters=[reference(images["astronaut"])])
    two = run(engine, adapters=[reference(images["astronaut"]), reference(images["card"], mode="reference_adain")])
    assert not np.array_equal(one, two)


def test_composes_with_ip_adapter_and_two_controlnets_in_either_order(tiny_model_root, images):
    tiny_ip = pytest.importorskip("ctrlgen.testing.tiny_ip_adapter")
    tiny_ip.add_tiny_ip_adapter_models(tiny_model_root)
    engine = Engine(store=ModelStore([ModelRoot(tiny_model_root.root)]), device="cpu")
    ip = {"type": "ip_adapter", "model": "tiny-ip-adapter_sd15", "image": images["card"], "scale": 0.7}
    ref = reference(images["astronaut"], mode="reference_adain+attn")
    controls = {"image": images["card"], "control": [
        {"model": "tiny-controlnet-sd15", "preprocessor": "canny"},
        {"model": "tiny-controlnet-sd15", "preprocessor": "none", "weight": 0.5}]}
    plain = run(engine)
    base = cached_pipeline(engine)
    before = pipeline_fingerprint(base)
    without_reference = run(engine, adapters=[ip], **controls)
    reference_first = run(engine, adapters=[ref, ip], **controls)
    # the reference's processors wrap the IP-Adapter's, whichever attached first
    assert np.array_equal(run(engine, adapters=[ip, ref], **controls), reference_first)
    assert np.abs(reference_first - without_reference).mean() > 0.5
    assert pipeline_fingerprint(base) == before
    assert np.array_equal(run(engine), plain)


def test_reference_pass_gets_no_controlnet_residuals(engine, images):
    base = cached_pipeline(engine)
    calls = []

    def spy(module, args, kwargs):
        calls.append(kwargs.get("down_block_additional_residuals") is not None)

    handle = base.unet.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        engine.run(job(image=images["card"], steps=2,
                       control=[{"model": "tiny-controlnet-sd15", "preprocessor": "canny"}],
                       adapters=[reference(images["astronaut"])]))
    finally:
        handle.remove()
    # per step: the real call (with the ControlNet's residuals), then the reference pass (without)
    assert calls == [True, False, True, False]


def test_restored_after_an_error_inside_the_job(engine, images, monkeypatch):
    from ctrlgen.adapters.reference import hooks as _reference

    base = cached_pipeline(engine)
    before = pipeline_fingerprint(base)

    def broken(*args, **kwargs):
        raise RuntimeError("VAE exploded")

    monkeypatch.setattr(_reference, "encode_reference", broken)
    with pytest.raises(RuntimeError, match="VAE exploded"):
        engine.run(job(adapters=[reference(images["astronaut"], mode="reference_adain+attn")]))
    assert pipeline_fingerprint(base) == before


def test_inpainting_unet_gets_a_nine_channel_reference(engine, images):
    import torch

    from ctrlgen.adapters.reference.hooks import ReferenceHooks, ReferenceUse

    base = cached_pipeline(engine)
    context = type("Context", (), {"pipeline": base})()
    use = ReferenceUse(np.zeros((64, 64, 3), np.uint8), True, False, 1.0, 0.5, 0.0, 1.0, "just_resize")
    hooks = ReferenceHooks(context, base.unet, [use], seed=0)
    try:
        sample = hooks._reference_sample(use, torch.zeros(2, 9, 8, 8), torch.tensor(500))
    finally:
        hooks.remove()
    assert sample.shape == (2, 9, 8, 8)
    assert torch.all(sample[:, 4] == 0)  # nothing masked
    assert torch.equal(sample[0, 5:], sample[1, 5:])  # the clean reference latent as the "masked image"


@pytest.mark.parametrize(
    ("use", "error", "message"),
    [
        ({"type": "reference"}, ParamError, "(reference).image is missing"),
        ({"type": "reference", "image": "/no/such/file.png"}, JobError, "file /no/such/file.png does not exist"),
        ({"type": "reference", "image": "IMG", "mode": "reference_magic"}, ParamError, "is not one of the choices"),
        ({"type": "reference", "image": "IMG", "style_fidelity": 2}, ParamError, "above its maximum 1"),
        ({"type": "reference", "image": "IMG", "guidance_start": 0.6, "guidance_end": 0.5}, JobError,
         "guidance_start=0.6 must be below guidance_end=0.5"),
    ],
)
def test_bad_uses_are_refused_with_clear_messages(engine, images, use, error, message):
    use = {key: images["card"] if value == "IMG" else value for key, value in use.items()}
    with pytest.raises(error) as info:
        engine.run(job(adapters=[use]))
    assert message in str(info.value)


@pytest.mark.gpu
def test_reference_on_cuda_in_half_precision(tiny_model_root, images):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    engine = Engine(store=ModelStore([ModelRoot(tiny_model_root.root)]), device="cuda", precision="fp16")
    plain = run(engine, architecture="sdxl")
    referenced = run(engine, architecture="sdxl", adapters=[reference(images["astronaut"], mode="reference_adain+attn")])
    assert np.abs(referenced - plain).mean() > 0.5
    assert np.array_equal(run(engine, architecture="sdxl"), plain)
