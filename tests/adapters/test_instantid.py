"""instantid: tiny random InstantID IP-Adapter, IdentityNet (a tiny SDXL ControlNet) and insightface
packs (tiny SCRFD/ArcFace ONNX), or MediaPipe's real detector on a real face, on the tiny SDXL model."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ctrlgen.core.engine.engine import Engine
from ctrlgen.core.engine.jobs import parse_job
from ctrlgen.core.errors import CtrlgenError, JobError, ModelNotFoundError
from ctrlgen.core.models.store import ModelStore
from ctrlgen.core.plugins.specs import ModelRoot
from ctrlgen.testing.contracts import AdapterContract, contract_image, pipeline_fingerprint

pytestmark = [
    pytest.mark.usefixtures("torch_single_thread"),
    pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning"),  # insightface's face_align
]


@pytest.fixture(scope="session")
def faces(tmp_path_factory):
    from skimage import data

    folder = tmp_path_factory.mktemp("instantid-pictures")
    astronaut = data.astronaut()
    paths = {"face": folder / "face.png", "pose": folder / "pose.png", "card": folder / "card.png"}
    Image.fromarray(np.ascontiguousarray(astronaut[20:245, 110:335])).save(paths["face"])
    Image.fromarray(np.ascontiguousarray(astronaut[:, ::-1])).save(
        paths["pose"]
    )  # the face elsewhere, mirrored
    Image.fromarray(contract_image(64, 64)).save(paths["card"])
    return {name: str(path) for name, path in paths.items()}


@pytest.fixture(scope="module")
def engine(tiny_model_root, ip_models):
    return Engine(store=ModelStore([ModelRoot(tiny_model_root.root)]), device="cpu")


def instantid(faces, **params):
    return {
        "type": "instantid",
        "face_image": faces["face"],
        "model": "tiny-instantid-ip-adapter",
        "controlnet": "tiny-instantid-controlnet",
        "detector": "mediapipe",
        **params,
    }


def run(engine, adapters=(), **extra) -> np.ndarray:
    job = parse_job(
        {
            "model": "tiny-sdxl",
            "prompt": "a portrait",
            "seed": 3,
            "steps": 2,
            "width": 64,
            "height": 64,
            "adapters": list(adapters),
            **extra,
        }
    )
    return np.asarray(engine.run(job).images[0]).astype(np.int16)


class TestInstantIDContract(AdapterContract):
    """InstantID with a ControlNet unit and a style IP-Adapter: the whole composition is undone."""

    adapter = "instantid"

    @pytest.fixture(autouse=True)
    def _models(self, ip_models, faces):
        self.faces = faces

    def adapter_job(self, image):
        return {
            "model": "tiny-sdxl",
            "prompt": "a portrait",
            "seed": 1,
            "steps": 2,
            "width": 64,
            "height": 64,
            "image": image,
            "control": [{"model": "tiny-controlnet-sdxl", "preprocessor": "canny"}],
            "adapters": [
                instantid(self.faces),
                {
                    "type": "ip_adapter",
                    "model": "tiny-ip-adapter_sdxl",
                    "image": image,
                    "block_preset": "style",
                },
            ],
        }


def test_identity_and_keypoints_are_separate_strengths(engine, faces):
    plain = run(engine)
    both = run(engine, [instantid(faces)])
    assert np.array_equal(run(engine, [instantid(faces)]), both)  # deterministic
    identity_only = run(engine, [instantid(faces, controlnet_conditioning_scale=0)])
    keypoints_only = run(engine, [instantid(faces, ip_adapter_scale=0)])
    assert len({plain.tobytes(), both.tobytes(), identity_only.tobytes(), keypoints_only.tobytes()}) == 4
    assert np.array_equal(
        run(engine, [instantid(faces, ip_adapter_scale=0, controlnet_conditioning_scale=0)]), plain
    )


def test_identitynet_attends_to_the_face_tokens_and_its_hook_goes_away(engine, faces, ip_models):
    identitynet = engine.load_controlnet(engine.store.find("tiny-instantid-controlnet"), "sdxl")
    seen = []
    handle = identitynet.register_forward_hook(  # sees the kwargs the forward really got
        lambda module, args, kwargs, output: seen.append(kwargs["encoder_hidden_states"].shape),
        with_kwargs=True,
    )
    try:
        run(engine, [instantid(faces)])
    finally:
        handle.remove()
    # 2 steps × (negative + positive rows) × the projection's 4 query tokens, not the 77 prompt tokens
    assert seen and all(shape[:2] == (2, 4) for shape in seen)
    assert not identitynet._forward_pre_hooks  # the swap is gone after the job


def test_insightface_detector_and_a_separate_pose_image(engine, faces):
    scrfd = run(engine, [instantid(faces, detector="insightface")])  # the tiny antelopev2 pack
    mediapipe = run(engine, [instantid(faces)])
    posed = run(engine, [instantid(faces, pose_image=faces["pose"])])
    assert len({scrfd.tobytes(), mediapipe.tobytes(), posed.tobytes()}) == 3


def test_keypoints_move_with_the_crop_and_resize_fit():
    from ctrlgen.adapters.instantid.identitynet import fit_points, keypoint_image
    from ctrlgen.core.images import fit

    marker = np.zeros((100, 200, 3), np.uint8)
    marker[36:46, 110:120] = 255  # a spot centred on (115, 41) in a 200×100 image
    fitted = fit(marker, 64, 64, "crop_and_resize")
    y, x = np.argwhere(fitted[..., 0] > 127).mean(axis=0)
    assert np.allclose(
        fit_points(np.array([[115.0, 41.0]]), (200, 100), 64, 64), [[x + 0.5, y + 0.5]], atol=0.5
    )
    kps = np.array([[80, 40], [120, 40], [100, 55], [85, 70], [115, 70]], np.float64)
    drawn = np.asarray(keypoint_image(kps, (200, 100), 64, 64))
    assert drawn.shape == (64, 64, 3) and tuple(drawn[35, 32]) == (
        0,
        0,
        255,
    )  # the nose: (100, 55) * 0.64 - (32, 0)


def test_joins_controlnet_units_as_a_multicontrolnet(engine, faces):
    control = {
        "image": faces["card"],
        "control": [{"model": "tiny-controlnet-sdxl", "preprocessor": "canny"}],
    }
    with_unit = run(engine, [instantid(faces)], **control)
    assert not np.array_equal(with_unit, run(engine, **control))
    assert not np.array_equal(with_unit, run(engine, [instantid(faces)]))


@pytest.mark.parametrize(
    ("params", "error", "message"),
    [
        ({"model": "tiny-ip-adapter_sdxl"}, JobError, "is not InstantID's IP-Adapter"),
        ({"controlnet": "tiny-controlnet-sd15"}, JobError, "is not a sdxl ControlNet"),
        ({"face_image": "CARD"}, JobError, "adapters[0] (instantid).face_image: no face found"),
        ({"guidance_start": 0.6, "guidance_end": 0.5}, JobError, "must be below guidance_end"),
        ({"model": "nothing-here"}, ModelNotFoundError, "'nothing-here' was not found (ipadapter)"),
    ],
)
def test_bad_uses_are_refused_and_leave_the_pipeline_clean(engine, faces, params, error, message):
    run(engine)
    base = next(p for k, p in engine._pipelines.items() if "tiny-sdxl" in k)
    before = pipeline_fingerprint(base)
    params = {k: faces["card"] if v == "CARD" else v for k, v in params.items()}
    with pytest.raises(error) as info:
        run(engine, [instantid(faces, **params)])
    assert message in str(info.value)
    assert pipeline_fingerprint(base) == before


def test_one_identity_per_job_and_sdxl_only(engine, faces):
    with pytest.raises(JobError, match="one instantid use"):
        run(engine, [instantid(faces), instantid(faces)])
    with pytest.raises(CtrlgenError, match="supports sdxl, not this sd15 checkpoint"):
        engine.run(
            parse_job(
                {"model": "tiny-sd15", "steps": 1, "width": 64, "height": 64, "adapters": [instantid(faces)]}
            )
        )


def test_missing_insightface_pack_names_the_files_and_folders(tmp_path):
    from ctrlgen.adapters.ip_adapter.face import analyze_face

    (tmp_path / "models" / "insightface").mkdir(parents=True)
    empty = ModelStore([ModelRoot(tmp_path)])
    with pytest.raises(ModelNotFoundError) as info:
        analyze_face(
            empty,
            np.zeros((64, 64, 3), np.uint8),
            "x",
            pack="antelopev2",
            detector="insightface",
            device="cpu",
        )
    message = str(info.value)
    assert "antelopev2/scrfd_10g_bnkps.onnx" in message and "antelopev2.zip" in message
    assert str(tmp_path / "models" / "insightface") in message


@pytest.mark.weights
def test_real_instantid_ip_adapter_is_a_face_resampler():
    import os

    from ctrlgen.adapters.ip_adapter.attach import projection_kind, read_ip_adapter

    store = ModelStore(
        [ModelRoot(p) for p in os.environ.get("CTRLGEN_WEIGHTS_ROOTS", "").split(os.pathsep) if p],
        allow_pickle=True,
    )
    try:
        entry = store.find("InstantX/InstantID/ip-adapter", category="ipadapter")
    except ModelNotFoundError:
        pytest.skip("InstantX/InstantID's ip-adapter.bin is not in the model store")
    state = read_ip_adapter(entry.path, True, "cpu")
    assert projection_kind(state) == "face_resampler"
    assert state["image_proj"]["latents"].shape == (1, 16, 1280) and len(state["ip_adapter"]) == 140
