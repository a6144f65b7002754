"""ip_adapter: tiny random IP-Adapters in h94's file formats, loaded by diffusers' real loader, on the
tiny SD1.5/SDXL checkpoints; the cached pipeline is left as it was after every job."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ctrlgen.core.engine.engine import Engine
from ctrlgen.core.engine.jobs import parse_job
from ctrlgen.core.errors import CtrlgenError, JobError, ModelNotFoundError, ParamError
from ctrlgen.core.models.store import ModelStore
from ctrlgen.core.plugins.specs import ModelRoot
from ctrlgen.testing.contracts import AdapterContract, contract_image, pipeline_fingerprint

pytestmark = [
    pytest.mark.usefixtures("torch_single_thread"),
    pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning"),  # insightface's face_align
]


@pytest.fixture(scope="session")
def pictures(tmp_path_factory):
    from skimage import data

    folder = tmp_path_factory.mktemp("ip-pictures")
    paths = {
        "card": folder / "card.png",
        "face": folder / "face.png",
        "cat": folder / "cat.png",
        "left": folder / "left.png",
        "right": folder / "right.png",
        "white": folder / "white.png",
        "black": folder / "black.png",
    }
    Image.fromarray(contract_image(64, 64)).save(paths["card"])
    Image.fromarray(np.ascontiguousarray(data.astronaut()[20:245, 110:335])).save(paths["face"])
    Image.fromarray(data.chelsea()).save(paths["cat"])
    mask = np.zeros((64, 64), np.uint8)
    mask[:, :32] = 255
    Image.fromarray(mask).save(paths["left"])
    Image.fromarray(255 - mask).save(paths["right"])
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(paths["white"])
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(paths["black"])
    return {name: str(path) for name, path in paths.items()}


@pytest.fixture(scope="module")
def engine(tiny_model_root, ip_models):
    return Engine(store=ModelStore([ModelRoot(tiny_model_root.root)]), device="cpu")


def job(adapters=(), model="tiny-sd15", **extra):
    return parse_job(
        {
            "model": model,
            "prompt": "a cat",
            "seed": 5,
            "steps": 2,
            "width": 64,
            "height": 64,
            "adapters": list(adapters),
            **extra,
        }
    )


def run(engine, *args, **kwargs) -> np.ndarray:
    return np.asarray(engine.run(job(*args, **kwargs)).images[0]).astype(np.int16)


_PLAIN: dict[str, np.ndarray] = {}


def plain(engine, checkpoint="tiny-sd15") -> np.ndarray:
    if checkpoint not in _PLAIN:
        _PLAIN[checkpoint] = run(engine, model=checkpoint)
    return _PLAIN[checkpoint]


class TestIPAdapterContract(AdapterContract):
    """Two IP-Adapters at once (plain, and Plus with two images and a mask) next to a ControlNet unit."""

    adapter = "ip_adapter"

    @pytest.fixture(autouse=True)
    def _models(self, ip_models, pictures):
        self.pictures = pictures

    def adapter_job(self, image):
        return {
            "model": "tiny-sd15",
            "prompt": "a cat",
            "seed": 1,
            "steps": 2,
            "width": 64,
            "height": 64,
            "image": image,
            "control": [{"model": "tiny-controlnet-sd15", "preprocessor": "canny"}],
            "adapters": [
                {"type": "ip_adapter", "model": "tiny-ip-adapter_sd15", "image": image, "scale": 0.7},
                {
                    "type": "ip_adapter",
                    "model": "tiny-ip-adapter-plus_sd15",
                    "image": self.pictures["cat"],
                    "images": [image],
                    "mask": self.pictures["left"],
                    "block_preset": "style",
                },
            ],
        }


@pytest.mark.parametrize(
    ("model", "checkpoint", "extra"),
    [
        ("tiny-ip-adapter_sd15", "tiny-sd15", {}),
        ("tiny-ip-adapter-plus_sd15", "tiny-sd15", {}),
        ("tiny-ip-adapter-full-face_sd15", "tiny-sd15", {}),
        ("tiny-ip-adapter-faceid_sd15", "tiny-sd15", {"face_detector": "mediapipe"}),
        ("tiny-ip-adapter-faceid-plusv2_sd15", "tiny-sd15", {"face_detector": "mediapipe"}),
        ("tiny-ip-adapter_sdxl", "tiny-sdxl", {}),
    ],
)
def test_every_variant_steers_and_scale_zero_is_the_plain_image(engine, pictures, model, checkpoint, extra):
    use = {"type": "ip_adapter", "model": model, "image": pictures["face"], **extra}
    steered = run(engine, [use], model=checkpoint)
    assert np.abs(steered - plain(engine, checkpoint)).mean() > 2.0
    assert np.array_equal(run(engine, [{**use, "scale": 0}], model=checkpoint), plain(engine, checkpoint))


def test_reference_image_matters_and_several_images_combine(engine, pictures):
    use = {"type": "ip_adapter", "model": "tiny-ip-adapter-plus_sd15"}
    card = run(engine, [{**use, "image": pictures["card"]}])
    assert np.array_equal(run(engine, [{**use, "image": pictures["card"]}]), card)  # deterministic
    cat = run(engine, [{**use, "image": pictures["cat"]}])
    both = run(engine, [{**use, "image": pictures["card"], "images": [pictures["cat"]]}])
    assert not np.array_equal(card, cat) and not np.array_equal(both, card) and not np.array_equal(both, cat)


def test_batches_and_unguided_jobs_get_their_embedding_rows(engine, pictures):
    use = {"type": "ip_adapter", "model": "tiny-ip-adapter-plus_sd15", "image": pictures["cat"]}
    for extra in ({"batch_size": 2}, {"cfg_scale": 1.0}):
        steered, unsteered = engine.run(job([use], **extra)), engine.run(job(**extra))
        assert len(steered.images) == len(unsteered.images) == extra.get("batch_size", 1)
        for a, b in zip(steered.images, unsteered.images, strict=True):
            assert not np.array_equal(np.asarray(a), np.asarray(b))


def test_block_presets_and_custom_block_scales(engine, pictures):
    use = {"type": "ip_adapter", "model": "tiny-ip-adapter_sdxl", "image": pictures["cat"]}
    outputs = {
        preset: run(engine, [{**use, "block_preset": preset}], model="tiny-sdxl")
        for preset in ("all", "style", "composition", "style_and_composition")
    }
    assert len({o.tobytes() for o in outputs.values()}) == 4
    custom = {"up_blocks.0.attentions.1": 1.0, "down_blocks.1.attentions.1": 1.0}  # the tiny UNet's blocks
    assert np.array_equal(
        run(engine, [{**use, "block_scales": custom}], model="tiny-sdxl"), outputs["style_and_composition"]
    )


def test_presets_name_instantstyles_blocks_on_the_real_unets():
    import torch
    from diffusers import UNet2DConditionModel

    from ctrlgen.adapters.ip_adapter.prepare import block_factors
    from ctrlgen.core.models.configs import bundled_config_files

    def real_unet(name):
        config = {
            k: v for k, v in bundled_config_files(name)["unet/config.json"].items() if not k.startswith("_")
        }
        with torch.device("meta"):
            return UNet2DConditionModel.from_config(config)

    sdxl, sd15 = real_unet("sdxl"), real_unet("sd15")
    assert block_factors("style", {}, sdxl, "sdxl", "x") == {"up_blocks.0.attentions.1": 1.0}
    assert block_factors("composition", {}, sdxl, "sdxl", "x") == {"down_blocks.2.attentions.1": 1.0}
    assert block_factors("style", {}, sd15, "sd15", "x") == {"up_blocks.1": 1.0}
    assert block_factors("composition", {}, sd15, "sd15", "x") == {"down_blocks.2": 1.0, "mid_block": 1.0}
    assert block_factors("all", {}, sd15, "sd15", "x") is None
    with pytest.raises(JobError, match="'up_blocks.0' names no cross-attention block"):
        block_factors(
            "all", {"up_blocks.0": 1.0}, sd15, "sd15", "adapters[0]"
        )  # SD1.5's up_blocks.0 has none


def test_attention_mask_makes_the_reference_regional(engine, pictures):
    use = {"type": "ip_adapter", "model": "tiny-ip-adapter-plus_sd15", "image": pictures["cat"]}
    everywhere = run(engine, [use])
    left, right = (run(engine, [{**use, "mask": pictures[side]}]) for side in ("left", "right"))
    assert len({everywhere.tobytes(), left.tobytes(), right.tobytes(), plain(engine).tobytes()}) == 4
    assert np.abs(run(engine, [{**use, "mask": pictures["white"]}]) - everywhere).max() <= 1
    with pytest.raises(JobError, match="black everywhere"):
        run(engine, [{**use, "mask": pictures["black"]}])


def test_faceid_from_insightface_or_a_saved_embedding(engine, pictures, ip_models, tmp_path):
    from ctrlgen.adapters.ip_adapter.face import analyze_face

    use = {"type": "ip_adapter", "model": "tiny-ip-adapter-faceid_sd15", "image": pictures["face"]}
    insightface = run(engine, [use])  # the tiny SCRFD and ArcFace of buffalo_l
    assert not np.array_equal(insightface, plain(engine))
    face = analyze_face(
        engine.store,
        np.asarray(Image.open(pictures["face"]).convert("RGB")),
        "face",
        pack="buffalo_l",
        detector="mediapipe",
        device="cpu",
    )
    np.save(tmp_path / "face.npy", face.embedding)
    saved = run(engine, [{**use, "face_embedding": str(tmp_path / "face.npy"), "image": pictures["card"]}])
    assert np.array_equal(saved, run(engine, [{**use, "face_detector": "mediapipe"}]))
    with pytest.raises(JobError, match="no face found"):
        run(engine, [{**use, "image": pictures["card"], "face_detector": "mediapipe"}])


def test_faceid_lora_is_left_to_the_lora_adapter(ip_models):
    from ctrlgen.adapters.ip_adapter.attach import read_ip_adapter

    state = read_ip_adapter(ip_models.ip_adapters["tiny-ip-adapter-faceid_sd15"], False, "cpu")
    assert state["ip_adapter"] and not any("_lora." in key for key in state["ip_adapter"])


@pytest.mark.parametrize(
    ("use", "checkpoint", "error", "message"),
    [
        ({"model": "tiny-ip-adapter_sdxl"}, "tiny-sd15", JobError, "is made for cross-attention width 96"),
        ({"model": "tiny-instantid-ip-adapter"}, "tiny-sdxl", JobError, "use the instantid adapter"),
        (
            {"model": "no-such-adapter"},
            "tiny-sd15",
            ModelNotFoundError,
            "'no-such-adapter' was not found (ipadapter)",
        ),
        (
            {"model": "tiny-ip-adapter_sd15", "image_encoder": "nope"},
            "tiny-sd15",
            ModelNotFoundError,
            "'nope'",
        ),
        (
            {"model": "tiny-ip-adapter_sd15", "images": "a.png"},
            "tiny-sd15",
            ParamError,
            "list of image paths",
        ),
        ({"model": "tiny-ip-adapter_sd15", "block_scales": [1]}, "tiny-sd15", ParamError, "block prefixes"),
        ({"model": "tiny-ip-adapter_sd15", "scale": 5}, "tiny-sd15", ParamError, "scale=5.0 is above"),
        ({"model": "tiny-ip-adapter_sd15", "image": "/no/such.png"}, "tiny-sd15", JobError, "does not exist"),
    ],
)
def test_bad_uses_are_refused_with_clear_messages(engine, pictures, use, checkpoint, error, message):
    base = next((p for k, p in engine._pipelines.items() if checkpoint in k), None)
    before = pipeline_fingerprint(base) if base is not None else None
    with pytest.raises(error) as info:
        engine.run(job([{"type": "ip_adapter", "image": pictures["card"], **use}], model=checkpoint))
    assert message in str(info.value)
    if before is not None:
        assert pipeline_fingerprint(base) == before


def test_missing_image_encoder_names_the_width_needed(tiny_model_root, ip_models, pictures, tmp_path):
    import shutil

    from ctrlgen.core.models.configs import sidecar_path

    (tmp_path / "models" / "Stable-diffusion").mkdir(parents=True)
    (tmp_path / "models" / "ipadapter").mkdir()
    checkpoint = tiny_model_root.checkpoints["sd15"]
    for source in (checkpoint, sidecar_path(checkpoint)):
        shutil.copy(source, tmp_path / "models" / "Stable-diffusion" / source.name)
    shutil.copy(ip_models.ip_adapters["tiny-ip-adapter_sd15"], tmp_path / "models" / "ipadapter")
    bare = Engine(store=ModelStore([ModelRoot(tmp_path)]), device="cpu")
    with pytest.raises(CtrlgenError, match="needs a CLIP image encoder with 16-wide image embeddings"):
        bare.run(job([{"type": "ip_adapter", "model": "tiny-ip-adapter_sd15", "image": pictures["card"]}]))


@pytest.mark.weights
def test_real_ip_adapter_files_are_read_as_their_variants():
    import os

    from ctrlgen.adapters.ip_adapter.attach import projection_kind, read_ip_adapter

    store = ModelStore(
        [ModelRoot(p) for p in os.environ.get("CTRLGEN_WEIGHTS_ROOTS", "").split(os.pathsep) if p]
    )
    expected = {
        "ip-adapter_sd15": "base",
        "ip-adapter-plus_sd15": "plus",
        "ip-adapter-full-face_sd15": "full",
        "ip-adapter-faceid_sd15": "faceid",
        "ip-adapter-faceid-plusv2_sd15": "faceid_plus",
    }
    found = 0
    for name, kind in expected.items():
        try:
            entry = store.find(name, category="ipadapter")
        except ModelNotFoundError:
            continue
        assert projection_kind(read_ip_adapter(entry.path, True, "cpu")) == kind
        found += 1
    if not found:
        pytest.skip("no h94 IP-Adapter in the model store")


@pytest.mark.gpu
@pytest.mark.weights
def test_real_sd15_ip_adapter_job_on_gpu(pictures):
    import os

    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    store = ModelStore(
        [ModelRoot(p) for p in os.environ.get("CTRLGEN_WEIGHTS_ROOTS", "").split(os.pathsep) if p]
    )
    try:
        checkpoint = next(e.name for e in store.entries("checkpoints") if e.identity.architecture == "sd15")
        store.find("ip-adapter_sd15", category="ipadapter")
    except (StopIteration, ModelNotFoundError):
        pytest.skip("needs an SD1.5 checkpoint and h94's ip-adapter_sd15 in the model store")
    gpu = Engine(store=store, device="cuda")
    result = gpu.run(
        parse_job(
            {
                "model": checkpoint,
                "prompt": "a photo",
                "seed": 1,
                "steps": 10,
                "adapters": [{"type": "ip_adapter", "model": "ip-adapter_sd15", "image": pictures["cat"]}],
            }
        )
    )
    assert result.images[0].size == (512, 512)


def test_weights_are_cached_per_engine_by_file_and_the_pipeline_stays_clean(tiny_model_root, ip_models, pictures,
                                                                             monkeypatch, tmp_path):
    """A second job with the same IP-Adapter file neither reads it nor runs diffusers' loader
    again, gives the same pixels, and leaves the cached pipeline as it found it; rewriting the
    file (new mtime and size) loads it again."""
    import os
    import shutil

    from diffusers.loaders import IPAdapterMixin

    from ctrlgen.adapters.ip_adapter import attach

    copy = tmp_path / "mine.safetensors"
    shutil.copyfile(ip_models.ip_adapters["tiny-ip-adapter-plus_sd15"], copy)
    fresh = Engine(store=ModelStore([ModelRoot(tiny_model_root.root)]), device="cpu")
    reads, loads = [], []
    monkeypatch.setattr(attach, "read_ip_adapter", _counting(attach.read_ip_adapter, reads))
    monkeypatch.setattr(IPAdapterMixin, "load_ip_adapter", _counting(IPAdapterMixin.load_ip_adapter, loads))
    use = {"type": "ip_adapter", "model": str(copy), "image": pictures["face"], "scale": 0.8}

    first = run(fresh, [use])
    base = next(iter(fresh._pipelines.values()))
    clean = pipeline_fingerprint(base)
    second = run(fresh, [use])
    assert (len(reads), len(loads)) == (1, 1)
    assert np.array_equal(first, second)
    assert pipeline_fingerprint(base) == clean
    assert np.array_equal(run(fresh), plain(fresh))  # no trace of it in a plain job
    third = run(fresh, [{**use, "scale": 0.3}])  # the cached processors take each job's scale
    assert not np.array_equal(third, first) and (len(reads), len(loads)) == (1, 1)

    shutil.copyfile(ip_models.ip_adapters["tiny-ip-adapter-plus_sd15"], copy)  # written again: a new mtime
    os.utime(copy, ns=(os.stat(copy).st_mtime_ns + 10**9,) * 2)
    assert np.array_equal(run(fresh, [use]), first)
    assert (len(reads), len(loads)) == (2, 2)
    fresh.unload()
    assert not fresh._adapter_cache


def _counting(function, calls):
    def counted(*args, **kwargs):
        calls.append(1)
        return function(*args, **kwargs)
    return counted
