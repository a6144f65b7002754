"""LayerDiffuse: files identified by header, RGBA results whose alpha is the decoder's, the
blending modes, clear errors, and the cached pipeline left exactly as it was."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from ctrlgen.adapters.layerdiffuse.decoder import load_decoder
from ctrlgen.adapters.layerdiffuse.patches import diffusers_key
from ctrlgen.core.engine.engine import Engine
from ctrlgen.core.engine.jobs import parse_job
from ctrlgen.core.errors import JobError, ModelNotFoundError
from ctrlgen.core.models.identify import identify_file, load_state_dict
from ctrlgen.core.models.store import ModelStore
from ctrlgen.core.plugins.specs import ModelRoot
from ctrlgen.testing.contracts import AdapterContract, pipeline_fingerprint

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def layer_root(tmp_path_factory, tiny_model_cache, tiny_sd15, tiny_sdxl):
    """A Forge-style install: the tiny checkpoints and every tiny LayerDiffuse file in models/layer_model."""
    from ctrlgen.testing.tiny import write_model_root
    from ctrlgen.testing.tiny_layerdiffuse import write_tiny_layerdiffuse

    root = write_model_root(tmp_path_factory.mktemp("forge"), "a1111", architectures=("sd15", "sdxl"),
                            cache_dir=tiny_model_cache).root
    return SimpleNamespace(root=root, files=write_tiny_layerdiffuse(root, tiny_model_cache))


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("pictures") / "layer.png"
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(path)
    return str(path)


@pytest.fixture(scope="module")
def engine(layer_root):
    return Engine(store=ModelStore([ModelRoot(layer_root.root)]), device="cpu")


def job(architecture="sd15", seed=3, **use):
    return {"model": f"tiny-{architecture}", "prompt": "a glass bottle", "seed": seed, "steps": 2, "width": 64,
            "height": 64, "adapters": [{"type": "layerdiffuse", **use}]}


def plain(job_dict):
    return {k: v for k, v in job_dict.items() if k != "adapters"}


def run_capturing(engine, job_dict):
    """The job's result, with the latent the VAE decoded and the VAE's own RGB (in [0, 1]) as the
    job's pipeline computed them (hooks registered before the adapter's, so they see the plain decode)."""
    base = engine.load_pipeline(engine.resolve_checkpoint(parse_job(job_dict)))
    seen = {}
    handles = [base.vae.post_quant_conv.register_forward_pre_hook(lambda m, a: seen.update(latent=a[0].clone())),
               base.vae.decoder.register_forward_hook(lambda m, a, out: seen.update(rgb=(out / 2 + 0.5).clamp(0, 1)))]
    try:
        result = engine.run(parse_job(job_dict))
    finally:
        for handle in handles:
            handle.remove()
    return result, seen


# -- identification ----------------------------------------------------------------------------
EXPECTED = {
    "layer_xl_transparent_attn": ("sdxl", "transparent_attn"),
    "layer_xl_transparent_conv": ("sdxl", "transparent_conv"),
    "layer_xl_fg2ble": ("sdxl", "blend_from_layer"),
    "layer_xl_bg2ble": ("sdxl", "blend_from_layer"),
    "layer_xl_fgble2bg": ("sdxl", "layer_from_blend"),
    "layer_xl_bgble2fg": ("sdxl", "layer_from_blend"),
    "layer_sd15_transparent_attn": ("sd15", "transparent_attn"),
    "vae_transparent_decoder": ("unknown", "decoder"),
    "layer_sd15_vae_transparent_decoder": ("unknown", "decoder"),
    "layer_sd15_joint": ("sd15", "joint"),
    "layer_sd15_fg2bg": ("sd15", "two_layers"),
    "layer_sd15_bg2fg": ("sd15", "two_layers"),
    "vae_transparent_encoder": ("unknown", "encoder"),
    "layer_sd15_vae_transparent_encoder": ("unknown", "encoder"),
}


def test_tiny_files_are_identified_by_their_headers_not_their_names(layer_root, tmp_path):
    assert set(layer_root.files) == set(EXPECTED)
    for stem, path in layer_root.files.items():
        renamed = tmp_path / f"download ({len(stem)}).safetensors"  # a name that says nothing
        shutil.copyfile(path, renamed)
        identity = identify_file(renamed)
        assert (identity.kind, identity.architecture, identity.variant) == ("layerdiffuse", *EXPECTED[stem]), stem
    store = ModelStore([ModelRoot(layer_root.root)])
    found = {e.path.stem: e.category for e in store.entries() if e.identity.kind == "layerdiffuse"}
    assert found == dict.fromkeys(EXPECTED, "layer_model")
    # Keys as the released files have them.
    header = load_state_dict(layer_root.files["layer_xl_transparent_attn"])
    assert "diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight::lora::0" in header
    assert "hookers.layers.0.temporal_o.bias" in load_state_dict(layer_root.files["layer_sd15_transparent_attn"])
    assert identify_file(layer_root.files["layer_xl_fg2ble"]).details["in_channels"] == 8


def test_sd15_multi_layer_files_are_identified_by_frames_and_control(layer_root):
    """layer_sd15_joint has the transparent file's modules three times over; fg2bg / bg2fg twice,
    with the picture encoder (kwargs_encoder) and each attention's control convolutions."""
    joint = identify_file(layer_root.files["layer_sd15_joint"])
    assert (joint.details["frames"], joint.details["control"]) == (3, False)
    two = identify_file(layer_root.files["layer_sd15_fg2bg"])
    assert (two.details["frames"], two.details["control"]) == (2, True)
    header = load_state_dict(layer_root.files["layer_sd15_bg2fg"])
    assert "kwargs_encoder.blocks_3.2.weight" in header and "hookers.layers.0.control_convs.1.2.weight" in header
    assert "hookers.layers.0.to_q_lora.2.down.weight" in load_state_dict(layer_root.files["layer_sd15_joint"])
    encoder = load_state_dict(layer_root.files["vae_transparent_encoder"])
    assert set(encoder) == {f"blocks.{i}.{p}" for i in range(0, 17, 2) for p in ("weight", "bias")}


@pytest.mark.parametrize("architecture", ["sd15", "sdxl"])
def test_ldm_names_map_back_to_the_diffusers_unet(engine, architecture):
    """The patches' original names land on the diffusers UNet's tensors (the inverse of the
    test kit's diffusers -> LDM writer, for both families)."""
    import torch

    from ctrlgen.testing.ldm_keys import unet_to_ldm

    unet = engine.load_pipeline(engine.resolve_checkpoint(parse_job(plain(job(architecture))))).unet
    tagged = {key: torch.empty(0) for key in unet.state_dict()}
    name_of = {id(tensor): key for key, tensor in tagged.items()}
    for ldm_key, tensor in unet_to_ldm(tagged, prefix="diffusion_model.").items():
        assert diffusers_key(ldm_key) == name_of[id(tensor)]
    with pytest.raises(ValueError, match="not a UNet tensor name"):
        diffusers_key("diffusion_model.nonsense.weight")


# -- results -----------------------------------------------------------------------------------
def test_alpha_and_colours_come_from_the_decoder_run_by_hand(engine, layer_root):
    """With one decoder pass, the result's four channels are the decoder's output for the latent
    the job decoded and the VAE's RGB of it, computed here by calling the network directly."""
    import torch

    result, seen = run_capturing(engine, job("sd15", augment=False))
    image = np.asarray(result.images[0])
    assert result.images[0].mode == "RGBA" and image.shape == (64, 64, 4)
    decoder = load_decoder(load_state_dict(layer_root.files["layer_sd15_vae_transparent_decoder"]), "cpu",
                           torch.float32)
    with torch.no_grad():
        by_hand = decoder(seen["rgb"], seen["latent"]).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    expected = np.concatenate([by_hand[..., 1:4], by_hand[..., :1]], axis=2)
    assert np.abs(image.astype(np.float64) / 255 - expected).max() <= 1.01 / 255
    alpha = image[..., 3]
    assert alpha.min() < 32 and alpha.max() > 200 and len(np.unique(alpha)) > 20  # a real matte, not a constant
    # The SDXL decoder (another file) gives another alpha for the same job.
    other, _ = run_capturing(engine, job("sd15", augment=False, decoder="vae_transparent_decoder"))
    assert not np.array_equal(np.asarray(other.images[0])[..., 3], alpha)


def test_augmented_decoding_is_the_median_of_eight_turned_passes(engine, layer_root):
    import torch

    result, seen = run_capturing(engine, job("sd15"))
    decoder = load_decoder(load_state_dict(layer_root.files["layer_sd15_vae_transparent_decoder"]), "cpu",
                           torch.float32)
    passes = []
    with torch.no_grad():
        for flip in (False, True):
            for turns in range(4):
                rgb, latent = seen["rgb"], seen["latent"]
                if flip:
                    rgb, latent = rgb.flip(3), latent.flip(3)
                out = decoder(torch.rot90(rgb, turns, (2, 3)), torch.rot90(latent, turns, (2, 3))).clamp(0, 1)
                out = torch.rot90(out, -turns, (2, 3))
                passes.append(out.flip(3) if flip else out)
    alpha = torch.stack(passes).median(dim=0).values[0, 0].numpy()
    assert np.abs(np.asarray(result.images[0])[..., 3] / 255 - alpha).max() <= 1.01 / 255


@pytest.mark.parametrize("method", ["attention", "conv"])
def test_sdxl_foreground_patches_the_unet_and_weight_zero_is_no_patch(engine, method):
    _, patched = run_capturing(engine, job("sdxl", method=method))
    _, zero = run_capturing(engine, job("sdxl", method=method, weight=0))
    _, unpatched = run_capturing(engine, plain(job("sdxl")))
    assert (patched["latent"] - unpatched["latent"]).abs().mean() > 1e-3
    assert (zero["latent"] - unpatched["latent"]).abs().max() < 1e-5


def test_sd15_attention_sharing_changes_every_attention_and_weight_zero_is_plain(engine):
    _, patched = run_capturing(engine, job("sd15", augment=False))
    _, zero = run_capturing(engine, job("sd15", augment=False, weight=0))
    _, unpatched = run_capturing(engine, plain(job("sd15")))
    assert (patched["latent"] - unpatched["latent"]).abs().mean() > 1e-3
    assert (zero["latent"] - unpatched["latent"]).abs().max() < 1e-4


def test_blending_modes_read_their_images(engine, layer_root, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    images = {}
    for name in ("a", "b"):
        images[name] = tmp_path / f"{name}.png"
        Image.fromarray((rng.random((64, 64, 4)) * 255).astype(np.uint8)).save(images[name])
    first = engine.run(parse_job(job("sdxl", mode="fg_to_blend", foreground=str(images["a"]))))
    second = engine.run(parse_job(job("sdxl", mode="fg_to_blend", foreground=str(images["b"]))))
    assert first.images[0].mode == "RGB"  # a blended picture: no alpha
    assert not np.array_equal(np.asarray(first.images[0]), np.asarray(second.images[0]))
    layer = engine.run(parse_job(job("sdxl", mode="bg_blend_to_fg", background=str(images["a"]),
                                     blended=str(images["b"]))))
    assert layer.images[0].mode == "RGBA"


def test_composes_with_a_lora_and_batches(engine, layer_root, tiny_model_cache):
    """SDXL attention injection (a PEFT LoRA itself) beside a user's LoRA, two images at once:
    both LoRAs act, each image gets its own matte, and the pipeline is clean after."""
    pytest.importorskip("peft")
    from ctrlgen.testing.tiny_lora import write_tiny_addons

    write_tiny_addons(layer_root.root, tiny_model_cache)
    engine.store.scan(refresh=True)
    base = engine.load_pipeline(engine.resolve_checkpoint(parse_job(plain(job("sdxl")))))
    engine.run(parse_job(plain(job("sdxl"))))
    before = pipeline_fingerprint(base)
    alone = engine.run(parse_job({**job("sdxl", augment=False), "batch_size": 2}))
    both = job("sdxl", augment=False)
    both["adapters"].append({"type": "lora", "model": "tiny-lora-sdxl", "weight": 0.8})
    together = engine.run(parse_job({**both, "batch_size": 2}))
    assert pipeline_fingerprint(base) == before
    assert [image.mode for image in together.images] == ["RGBA", "RGBA"]
    first, second = (np.asarray(image) for image in together.images)
    assert not np.array_equal(first[..., 3], second[..., 3])
    assert not np.array_equal(first, np.asarray(alone.images[0]))


# -- checks before anything loads ---------------------------------------------------------------
@pytest.mark.parametrize(("use", "architecture", "error", "words"), [
    ({"mode": "fg_to_blend", "foreground": "PICTURE"}, "sd15", JobError, ["'fg_to_blend'", "sdxl", "sd15"]),
    ({"method": "conv"}, "sd15", JobError, ["attention injection only for SD1.5", "'attention'"]),
    ({"mode": "bg_to_blend"}, "sdxl", JobError, ["needs the image(s) background"]),
    ({"model": "layer_xl_transparent_conv"}, "sdxl", JobError, ["transparent_conv", "transparent_attn"]),
    ({"decoder": "layer_xl_transparent_attn"}, "sdxl", JobError, ["decoder", "vae_transparent_decoder"]),
])
def test_check_refuses_bad_uses_clearly(engine, picture, use, architecture, error, words):
    use = {key: picture if value == "PICTURE" else value for key, value in use.items()}
    with pytest.raises(error) as caught:
        engine.check(parse_job(job(architecture, **use)))
    for word in words:
        assert word in str(caught.value), (word, str(caught.value))


def test_check_refuses_other_tasks(engine, picture, tmp_path):
    from PIL import Image

    with pytest.raises(JobError, match="txt2img"):
        engine.check(parse_job({**job("sd15", mode="joint"), "task": "img2img", "image": picture}))
    mask = tmp_path / "mask.png"
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(mask)
    with pytest.raises(JobError, match="inpaint works in mode 'foreground'"):
        engine.check(parse_job({**job("sd15", mode="joint"), "task": "inpaint", "image": picture, "mask": str(mask)}))
    engine.check(parse_job({**job("sd15"), "task": "inpaint", "image": picture, "mask": str(mask)}))  # foreground


def test_missing_weights_say_which_file_and_where(picture, tmp_path, tiny_model_cache):
    from ctrlgen.testing.tiny import write_model_root
    from ctrlgen.testing.tiny_layerdiffuse import write_tiny_layerdiffuse

    root = write_model_root(tmp_path, "a1111", architectures=("sd15", "sdxl"), cache_dir=tiny_model_cache).root
    write_tiny_layerdiffuse(root, tiny_model_cache, names=("layer_xl_transparent_attn",))
    engine = Engine(store=ModelStore([ModelRoot(root)]), device="cpu")
    with pytest.raises(ModelNotFoundError, match="vae_transparent_decoder.safetensors.*models/layer_model"):
        engine.check(parse_job(job("sdxl")))
    with pytest.raises(ModelNotFoundError, match="layer_xl_bg2ble.safetensors"):
        engine.check(parse_job(job("sdxl", mode="bg_to_blend", background=picture)))
    with pytest.raises(ModelNotFoundError, match="layer_sd15_transparent_attn"):
        engine.check(parse_job(job("sd15")))


def test_release_names_break_ties_between_files_with_the_same_tensors(engine):
    from ctrlgen.adapters.layerdiffuse.weights import find_files

    use = {"mode": "fg_to_blend", "method": "attention", "model": None, "decoder": None}
    assert find_files(engine.store, use, "sdxl").patch.path.stem == "layer_xl_fg2ble"
    use["mode"] = "bg_to_blend"
    assert find_files(engine.store, use, "sdxl").patch.path.stem == "layer_xl_bg2ble"
    use["mode"] = "foreground"
    assert find_files(engine.store, use, "sd15").decoder.path.stem == "layer_sd15_vae_transparent_decoder"
    assert find_files(engine.store, use, "sdxl").decoder.path.stem == "vae_transparent_decoder"


# -- registry, CLI and the pipeline left clean ----------------------------------------------------
def test_capabilities_list_the_adapter_with_its_schema(fresh_plugins):
    from ctrlgen.core.plugins.manager import get_registry

    spec = get_registry("adapters").get("layerdiffuse")
    params = {p.name: p for p in spec.params}
    assert set(spec.architectures) == {"sd15", "sdxl"}
    assert params["mode"].choices == ("foreground", "fg_to_blend", "bg_to_blend", "fg_blend_to_bg", "bg_blend_to_fg",
                                      "joint", "fg_to_bg", "bg_to_fg")
    assert params["model"].category == params["decoder"].category == params["encoder"].category == "layer_model"
    assert {"foreground_prompt", "background_prompt", "blended_prompt"} <= set(params)


def test_ctrlgen_generate_writes_an_rgba_png(layer_root, tmp_path, monkeypatch):
    from PIL import Image

    from ctrlgen.core.cli.main import main

    monkeypatch.setenv("CTRLGEN_MODEL_ROOTS", str(layer_root.root))
    job_file = tmp_path / "bottle.json"
    job_file.write_text(json.dumps(job("sdxl", augment=False)))
    assert main(["generate", str(job_file), "--out", str(tmp_path / "out"), "--device", "cpu", "--quiet"]) == 0
    (written,) = (tmp_path / "out").glob("bottle-*.png")
    with Image.open(written) as image:
        assert image.mode == "RGBA" and len(np.unique(np.asarray(image)[..., 3])) > 10


def test_sdxl_patches_leave_the_cached_pipeline_exactly_as_it_was(engine, picture):
    engine.run(parse_job(plain(job("sdxl"))))
    base = engine.load_pipeline(engine.resolve_checkpoint(parse_job(plain(job("sdxl")))))
    before = pipeline_fingerprint(base)
    for use in ({}, {"method": "conv"}, {"mode": "fg_blend_to_bg", "foreground": picture, "blended": picture}):
        engine.run(parse_job(job("sdxl", augment=False, **use)))
        assert pipeline_fingerprint(base) == before, use


class TestLayerDiffuseContract(AdapterContract):
    """SD1.5 attention sharing and the decoder hook."""

    adapter = "layerdiffuse"

    @pytest.fixture
    def contract_model_root(self, layer_root):
        return layer_root

    def adapter_job(self, image):
        return job("sd15", seed=1, augment=False)


class TestLayerDiffuseBlendingContract(AdapterContract):
    """SDXL: weight differences, the widened first convolution and the decoder hook."""

    adapter = "layerdiffuse"

    @pytest.fixture
    def contract_model_root(self, layer_root):
        return layer_root

    def adapter_job(self, image):
        return job("sdxl", seed=1, mode="bg_blend_to_fg", background=image, blended=image, augment=False)


class TestLayerDiffuseJointContract(AdapterContract):
    """SD1.5 attention sharing across three frames (cached modules) and the per-frame decoder hook."""

    adapter = "layerdiffuse"

    @pytest.fixture
    def contract_model_root(self, layer_root):
        return layer_root

    def adapter_job(self, image):
        return job("sd15", seed=1, mode="joint", foreground_prompt="a cat", augment=False)
