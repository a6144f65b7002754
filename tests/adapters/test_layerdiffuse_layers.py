"""LayerDiffuse's SD1.5 multi-frame modes (joint, fg_to_bg, bg_to_fg), the transparent VAE
encoder in img2img, and the patch files read once per engine."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from ctrlgen.core.engine.engine import Engine
from ctrlgen.core.engine.jobs import parse_job
from ctrlgen.core.errors import JobError
from ctrlgen.core.models.store import ModelStore
from ctrlgen.core.plugins.specs import ModelRoot

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def layer_root(tmp_path_factory, tiny_model_cache, tiny_sd15, tiny_sdxl):
    from ctrlgen.testing.tiny import write_model_root
    from ctrlgen.testing.tiny_layerdiffuse import write_tiny_layerdiffuse

    root = write_model_root(tmp_path_factory.mktemp("forge-layers"), "a1111", architectures=("sd15", "sdxl"),
                            cache_dir=tiny_model_cache).root
    return SimpleNamespace(root=root, files=write_tiny_layerdiffuse(root, tiny_model_cache))


@pytest.fixture(scope="module")
def engine(layer_root):
    return Engine(store=ModelStore([ModelRoot(layer_root.root)]), device="cpu")


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("layer-pictures")
    rng = np.random.default_rng(4)
    paths = {}
    for name in ("one", "two"):
        paths[name] = str(folder / f"{name}.png")
        Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(paths[name])
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[12:52, 20:44] = (210, 60, 40, 255)
    rgba[12:52, 16:20, 3] = 128  # a soft edge
    paths["rgba"] = str(folder / "rgba.png")
    Image.fromarray(rgba, "RGBA").save(paths["rgba"])
    return paths


def job(architecture="sd15", seed=5, **use):
    return {"model": f"tiny-{architecture}", "prompt": "a glass bottle", "seed": seed, "steps": 2, "width": 64,
            "height": 64, "adapters": [{"type": "layerdiffuse", "augment": False, **use}]}


def test_joint_gives_foreground_background_and_blend_per_seed(engine):
    """Three images per seed, side by side in one batch: the first through the transparent
    decoder (RGBA), the others the VAE's RGB; the result says which is which."""
    import torch

    from ctrlgen.adapters.layerdiffuse.decoder import decode_rgba, load_decoder
    from ctrlgen.core.models.identify import load_state_dict

    base = engine.load_pipeline(engine.resolve_checkpoint(parse_job(job())))
    seen = {}
    handles = [base.vae.post_quant_conv.register_forward_pre_hook(lambda m, a: seen.update(latent=a[0].clone())),
               base.vae.decoder.register_forward_hook(lambda m, a, out: seen.update(rgb=(out / 2 + 0.5).clamp(0, 1)))]
    try:
        result = engine.run(parse_job({**job(mode="joint"), "batch_size": 2}))
    finally:
        for handle in handles:
            handle.remove()
    assert result.labels == ["foreground", "background", "blended"] * 2
    assert [image.mode for image in result.images] == ["RGBA", "RGB", "RGB"] * 2
    assert result.seeds == [5, 5, 5, 6, 6, 6]
    assert "Layer: background" in result.infotexts[1]
    assert seen["latent"].shape[0] == 6  # one batch: 2 seeds × 3 frames
    decoder = load_decoder(load_state_dict(engine.store.find("layer_sd15_vae_transparent_decoder").path), "cpu",
                           torch.float32)
    for row in (0, 3):
        found = decode_rgba(decoder, seen["rgb"][row: row + 1], seen["latent"][row: row + 1], augment=False)
        expected = (found[0, 0].numpy() * 255 + 0.5).astype(np.uint8)
        assert np.abs(np.asarray(result.images[row])[..., 3].astype(int) - expected).max() <= 1
    for row in (1, 2, 4, 5):
        expected = (seen["rgb"][row].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        assert np.abs(np.asarray(result.images[row]).astype(int) - expected).max() <= 1
    # The frames differ (their own noise and projections), and the seeds' too.
    arrays = [np.asarray(image)[..., :3].astype(int) for image in result.images]
    assert not np.array_equal(arrays[1], arrays[2]) and not np.array_equal(arrays[1], arrays[4])


def test_joint_frames_read_their_own_prompts_and_share_attention(engine, monkeypatch):
    """foreground_prompt reaches the foreground frame's conditional cross-attention only; through
    the frame attention the other frames change too. The unconditional rows keep the negative prompt."""
    from ctrlgen.adapters.layerdiffuse import sharing

    plain = engine.run(parse_job(job(mode="joint")))
    again = engine.run(parse_job(job(mode="joint")))
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(plain.images, again.images, strict=True))
    contexts = []
    original = sharing.build_processors

    def recording(*args, **kwargs):
        processors = original(*args, **kwargs)
        for processor in processors:
            frame = processor._frame

            def wrapped(attn, f, states, context, frame=frame):
                contexts.append((f, states.shape[0], context))
                return frame(attn, f, states, context)

            processor._frame = wrapped
        return processors

    monkeypatch.setattr(sharing, "build_processors", recording)
    fresh = Engine(store=engine.store, device="cpu")
    told = fresh.run(parse_job(job(mode="joint", foreground_prompt="a red cat")))
    assert not np.array_equal(np.asarray(told.images[0]), np.asarray(plain.images[0]))
    assert not np.array_equal(np.asarray(told.images[1]), np.asarray(plain.images[1]))
    cross = [(f, rows, c) for f, rows, c in contexts if c.shape[1] % 77 == 0]  # text contexts: 77-token chunks
    own = [c for f, rows, c in cross if f == 0 and rows == 1]
    others = [c for f, rows, c in cross if f == 1]
    assert own and others
    # Frame 0's conditional half saw another text than frame 1's (the job's prompt).
    assert not np.allclose(own[0].numpy(), others[0][1:].numpy())


@pytest.mark.parametrize(("mode", "given", "labels", "modes"), [
    ("fg_to_bg", "foreground", ["background", "blended"], ["RGB", "RGB"]),
    ("bg_to_fg", "background", ["foreground", "blended"], ["RGBA", "RGB"]),
])
def test_two_frame_modes_read_their_picture(engine, pictures, mode, given, labels, modes):
    """The given layer reaches every attention through the picture encoder: another picture,
    other images."""
    first = engine.run(parse_job(job(mode=mode, **{given: pictures["one"]})))
    second = engine.run(parse_job(job(mode=mode, **{given: pictures["two"]})))
    assert first.labels == labels and [image.mode for image in first.images] == modes
    for a, b in zip(first.images, second.images, strict=True):
        assert not np.array_equal(np.asarray(a), np.asarray(b))


def test_multi_frame_uses_are_refused_clearly(engine, pictures, layer_root):
    with pytest.raises(JobError, match="'joint' exists for sd15"):
        engine.check(parse_job(job("sdxl", mode="joint")))
    with pytest.raises(JobError, match="needs the image.*foreground"):
        engine.check(parse_job(job(mode="fg_to_bg")))
    with pytest.raises(JobError, match="layer_sd15_joint.*is sd15 transparent_attn|joint file such as"):
        engine.check(parse_job(job(mode="joint", model=str(layer_root.files["layer_sd15_transparent_attn"]))))
    region = {"type": "region", "mask": pictures["one"], "prompt": "a cat"}
    with pytest.raises(JobError, match="regions both replace"):
        engine.check(parse_job({**job(mode="joint"), "adapters": [job(mode="joint")["adapters"][0], region]}))


def test_patch_files_are_read_once_per_engine(layer_root, monkeypatch):
    """A second job does not open the UNet patch files again (cached by file), SD1.5 and SDXL."""
    from ctrlgen.core.models import identify

    reads = []
    original = identify.load_state_dict

    def counting(path, *args, **kwargs):
        reads.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(identify, "load_state_dict", counting)
    fresh = Engine(store=ModelStore([ModelRoot(layer_root.root)]), device="cpu")
    for use in ({"mode": "joint"}, {"mode": "joint"}, {}, {}):
        fresh.run(parse_job(job(**use)))
    fresh.run(parse_job(job("sdxl", method="conv")))
    fresh.run(parse_job(job("sdxl", method="conv")))
    for stem in ("layer_sd15_joint", "layer_sd15_transparent_attn", "layer_xl_transparent_conv"):
        assert sum(stem + ".safetensors" in path for path in reads) == 1, (stem, reads)


def test_transparent_encoder_offset_reaches_the_initial_latents(engine, pictures, monkeypatch):
    """img2img of an RGBA picture: the latent img2img starts from is the VAE's mean plus its std
    times the encoder's offset (×300), of the colours premultiplied by alpha; measured where
    the scheduler noises it, against the VAE and the encoder called here by hand."""
    import torch

    from ctrlgen.adapters.layerdiffuse import encoder as encoder_module
    from ctrlgen.core.engine.samplers import make_scheduler

    img2img = {**job(), "task": "img2img", "image": pictures["rgba"], "strength": 0.5}
    base = engine.load_pipeline(engine.resolve_checkpoint(parse_job(img2img)))
    scheduler_class = type(make_scheduler(parse_job(img2img).sampler, base.scheduler.config))
    noised, offsets = [], []
    add_noise = scheduler_class.add_noise

    def recording(self, original_samples, noise, timesteps):
        noised.append(original_samples.clone())
        return add_noise(self, original_samples, noise, timesteps)

    monkeypatch.setattr(scheduler_class, "add_noise", recording)
    build = encoder_module.build_encoder

    def hooked(state_dict):
        model = build(state_dict)
        model.register_forward_hook(lambda m, a, out: offsets.append(out.detach().clone()))
        return model

    monkeypatch.setattr(encoder_module, "build_encoder", hooked)
    fresh = Engine(store=engine.store, device="cpu")
    result = fresh.run(parse_job(img2img))
    assert result.images[0].mode == "RGBA" and len(offsets) == 1 and len(noised) == 1
    offset = offsets[0] * encoder_module.OFFSET_SCALE
    assert float(offset.abs().max()) > 0.05  # an offset that matters
    vae = fresh.load_pipeline(fresh.resolve_checkpoint(parse_job(img2img))).vae
    from PIL import Image

    rgba = np.asarray(Image.open(pictures["rgba"])).astype(np.float32) / 255
    feed = torch.from_numpy((rgba[..., :3] * 2 - 1) * rgba[..., 3:]).permute(2, 0, 1)[None]
    with torch.no_grad():
        distribution = vae.encode(feed).latent_dist
    expected = (distribution.mean + distribution.std * offset) * vae.config.scaling_factor
    assert torch.allclose(noised[0], expected, atol=1e-4)
    plain = distribution.mean * vae.config.scaling_factor
    assert not torch.allclose(noised[0], plain, atol=1e-3)


def test_img2img_without_the_encoder_says_which_file(pictures, tmp_path, tiny_model_cache):
    from ctrlgen.core.errors import ModelNotFoundError
    from ctrlgen.testing.tiny import write_model_root
    from ctrlgen.testing.tiny_layerdiffuse import write_tiny_layerdiffuse

    root = write_model_root(tmp_path, "a1111", architectures=("sd15",), cache_dir=tiny_model_cache).root
    write_tiny_layerdiffuse(root, tiny_model_cache,
                            names=("layer_sd15_transparent_attn", "layer_sd15_vae_transparent_decoder"))
    bare = Engine(store=ModelStore([ModelRoot(root)]), device="cpu")
    with pytest.raises(ModelNotFoundError, match="layer_sd15_vae_transparent_encoder"):
        bare.check(parse_job({**job(), "task": "img2img", "image": pictures["rgba"]}))


def test_ctrlgen_generate_writes_each_layer(layer_root, tmp_path, monkeypatch):
    import json

    from PIL import Image

    from ctrlgen.core.cli.main import main

    monkeypatch.setenv("CTRLGEN_MODEL_ROOTS", str(layer_root.root))
    job_file = tmp_path / "layers.json"
    job_file.write_text(json.dumps(job(mode="joint")))
    assert main(["generate", str(job_file), "--out", str(tmp_path / "out"), "--device", "cpu", "--quiet"]) == 0
    written = sorted((tmp_path / "out").glob("layers-*.png"))
    assert len(written) == 3
    modes = [Image.open(path).mode for path in written]
    layers = [Image.open(path).info["parameters"].rsplit("Layer: ", 1)[1] for path in written]
    assert modes == ["RGBA", "RGB", "RGB"] and layers == ["foreground", "background", "blended"]


def test_the_encoder_changes_only_the_jobs_picture(engine, pictures):
    """Another encode of the same size (a reference-only image, say) goes through the plain VAE."""
    import torch

    from ctrlgen.adapters.layerdiffuse.encoder import EncodeHook

    vae = engine.load_pipeline(engine.resolve_checkpoint(parse_job(job()))).vae
    model = torch.nn.Conv2d(4, 4, 8, stride=8)
    rgba = np.zeros((64, 64, 4), np.uint8)
    shown = np.full((64, 64, 3), 255, np.uint8)
    other = torch.zeros(1, 3, 64, 64)
    with torch.no_grad():
        plain = vae.encode(other).latent_dist.mean
        with EncodeHook(vae, model, rgba, shown) as hook:
            assert torch.equal(vae.encode(other).latent_dist.mean, plain) and hook.offset is None
            assert vae.encode(torch.ones(1, 3, 64, 64)).latents.shape == plain.shape and hook.offset is not None
    assert "encode" not in vae.__dict__


def test_inpaint_keeps_the_decoders_alpha_under_the_mask_and_the_picture_elsewhere(engine, pictures, tmp_path,
                                                                                   monkeypatch):
    """Inpaint of an RGBA picture in mode 'foreground': the region the pipeline encodes goes
    through the transparent encoder (its offset in the latent), the repainted area takes the
    transparent decoder's alpha through the feathered mask, and every pixel outside the mask is
    the input's, colour and alpha."""
    from PIL import Image

    from ctrlgen.adapters.layerdiffuse import encoder as encoder_module
    from ctrlgen.core.engine import masks

    mask = np.zeros((64, 64), np.uint8)
    mask[20:44, 24:48] = 255
    mask_path = tmp_path / "mask.png"
    Image.fromarray(mask).save(mask_path)
    composited, offsets = [], []
    composite_rgba = masks.composite_rgba

    def recording(original, generated, alpha, region=None):
        done = composite_rgba(original, generated, alpha, region)
        box = region or masks.Region(0, 0, original.shape[1], original.shape[0])
        composited.append((box.crop(original).copy(), generated.copy(), box.crop(np.asarray(alpha)).copy(),
                           box.crop(done).copy()))
        return done

    from ctrlgen.core.engine import tasks

    monkeypatch.setattr(masks, "composite_rgba", recording)  # the region path imports it when it runs
    monkeypatch.setattr(tasks, "composite_rgba", recording)
    build = encoder_module.build_encoder

    def hooked(state_dict):
        model = build(state_dict)
        model.register_forward_hook(lambda m, a, out: offsets.append(out.detach().clone()))
        return model

    monkeypatch.setattr(encoder_module, "build_encoder", hooked)
    fresh = Engine(store=engine.store, device="cpu")
    inpaint = {**job(), "task": "inpaint", "image": pictures["rgba"], "mask": str(mask_path), "strength": 0.8,
               "inpaint": {"feather_px": 4}}
    result = fresh.run(parse_job(inpaint))
    image = np.asarray(result.images[0])
    source = np.asarray(Image.open(pictures["rgba"]))
    assert result.images[0].mode == "RGBA"
    assert len(offsets) == 1 and float(offsets[0].abs().max()) * encoder_module.OFFSET_SCALE > 0.05
    assert len(composited) == 1
    original, generated, weight, done = composited[0]
    assert generated.shape[2] == 4 and generated[..., 3].std() > 0  # the decoder's own alpha, not opaque
    core = weight >= 1.0  # fully repainted: the generated pixel, its alpha the decoder's
    assert core.sum() > 100
    assert np.abs(done[..., 3][core].astype(int) - generated[..., 3][core].astype(int)).max() <= 1
    assert np.array_equal(done[weight == 0], original[weight == 0])
    # Everything outside the changed box is the input's, colour and alpha.
    x0, y0, x1, y1 = result.changed_box
    assert (x1 - x0) * (y1 - y0) >= 24 * 24
    outside = np.ones((64, 64), bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(image[outside], source[outside])
