"""SDXL union ControlNets: loaded from the real layouts, a control type per unit reaching the model,
several units in one multi-condition pass, clear errors, and a clean pipeline afterwards."""

from __future__ import annotations

import numpy as np
import pytest

from ctrlgen.core.errors import JobError
from ctrlgen.testing.contracts import AdapterContract, contract_image

pytestmark = pytest.mark.usefixtures("torch_single_thread")

UNION = "tiny-controlnet-union-sdxl"
UNION_FOLDER = "tiny-controlnet-union-sdxl-folder"


@pytest.fixture(scope="module")
def union_root(tmp_path_factory, tiny_model_cache, tiny_sdxl):
    """An A1111 root with the tiny SDXL family and the tiny union ControlNet (file and folder)."""
    from ctrlgen.testing.tiny import write_model_root
    from ctrlgen.testing.tiny_union import add_tiny_union

    root = tmp_path_factory.mktemp("union-root")
    placed = write_model_root(root, "a1111", architectures=("sdxl",), cache_dir=tiny_model_cache)
    add_tiny_union(placed.models_dir, tiny_model_cache)
    return placed


@pytest.fixture(scope="module")
def engine(union_root):
    from ctrlgen.core.engine.engine import Engine
    from ctrlgen.core.models.store import ModelStore
    from ctrlgen.core.plugins.specs import ModelRoot

    return Engine(store=ModelStore([ModelRoot(union_root.root)]), device="cpu")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("union-files")
    mask = np.zeros((64, 64), np.uint8)
    mask[16:40, 20:48] = 255
    Image.fromarray(contract_image(64, 64)).save(folder / "photo.png")
    Image.fromarray(mask).save(folder / "mask.png")
    return {"image": str(folder / "photo.png"), "mask": str(folder / "mask.png"), "raw": mask,
            "picture": contract_image(64, 64)}


def _job(files, *units, **extra):
    return {"model": "tiny-sdxl", "prompt": "a cat", "seed": 2, "steps": 2, "width": 64, "height": 64,
            "image": files["image"], "control": list(units), **extra}


def _union_model(engine, name=UNION):
    return engine.load_controlnet(engine.store.find(name, category=("controlnet",)), "sdxl")


def _run_capturing(engine, job, names=(UNION,)):
    """Run ``job``; per union model, the (control_type, control_type_idx, cond count) of its first call."""
    from ctrlgen.core.engine.jobs import parse_job

    seen: dict[str, tuple] = {}
    handles = []
    for name in names:
        def capture(module, args, kwargs, name=name):
            if name not in seen:
                seen[name] = (kwargs["control_type"].clone(), list(kwargs["control_type_idx"]),
                              [c.clone() for c in kwargs["controlnet_cond"]])
        handles.append(_union_model(engine, name).register_forward_pre_hook(capture, with_kwargs=True))
    try:
        result = engine.run(parse_job(job))
    finally:
        for handle in handles:
            handle.remove()
    return result, seen


def test_store_and_loader_read_both_layouts(engine, union_root):
    import torch
    from diffusers import ControlNetUnionModel

    from ctrlgen.core.models.loading import load_controlnet

    for name in (UNION, UNION_FOLDER):
        entry = engine.store.find(name, category=("controlnet",))
        assert (entry.identity.kind, entry.identity.architecture, entry.identity.variant) == (
            "controlnet", "sdxl", "union")
    single = load_controlnet(engine.store.find(UNION).path, "sdxl")
    folder = load_controlnet(engine.store.find(UNION_FOLDER).path, "sdxl")
    assert isinstance(single, ControlNetUnionModel) and isinstance(folder, ControlNetUnionModel)
    assert single.config.num_control_type == 8
    a, b = single.state_dict(), folder.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    half = load_controlnet(engine.store.find(UNION).path, "sdxl", torch_dtype=torch.float16)
    assert half.dtype == torch.float16


def test_folder_with_xinsirs_class_name_loads_as_union(engine, tmp_path):
    import json
    import shutil

    from diffusers import ControlNetUnionModel

    from ctrlgen.core.models.loading import load_controlnet

    folder = tmp_path / "controlnet-union-sdxl-1.0"
    shutil.copytree(engine.store.find(UNION_FOLDER).path, folder)
    config = json.loads((folder / "config.json").read_text())
    config["_class_name"] = "ControlNetModel_Union"  # as xinsir's repository has it
    (folder / "config.json").write_text(json.dumps(config))
    assert isinstance(load_controlnet(folder, "sdxl"), ControlNetUnionModel)


@pytest.mark.parametrize("control_types", [6, 8])
def test_bundled_config_fits_the_real_union_files(tmp_path, control_types):
    """Without a sidecar, the SDXL ControlNet config plus the sizes in the header rebuild the real
    union model (the first release: 6 control types, ProMax: 8), tensor for tensor."""
    import torch
    from diffusers import ControlNetUnionModel

    from ctrlgen.core.models.loading import _union_config, is_union_header, read_safetensors_header
    from ctrlgen.testing.headers import real_header, write_header_only_safetensors

    tensors = dict(real_header("controlnet", "sdxl", "union", "diffusers"))  # xinsir's first release
    if control_types != 6:  # ProMax: two more control types in the embedding and its projection
        dtype, (rows, width) = tensors["control_add_embedding.linear_1.weight"]
        tensors["task_embedding"] = (dtype, (control_types, 320))
        tensors["control_add_embedding.linear_1.weight"] = (dtype, (rows, width // 6 * control_types))
    path = write_header_only_safetensors(tmp_path / "diffusion_pytorch_model_promax.safetensors", tensors)
    header = read_safetensors_header(path)
    assert is_union_header(header)
    config = _union_config(path, header, "sdxl")
    assert config["num_control_type"] == control_types
    with torch.device("meta"):
        model = ControlNetUnionModel.from_config(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {k: tuple(v["shape"]) for k, v in header.items()}


def test_union_mismatching_file_is_a_clear_error(engine, tmp_path):
    import shutil

    from ctrlgen.core.errors import ModelFormatError
    from ctrlgen.core.models.loading import load_controlnet

    lone = tmp_path / "union.safetensors"  # the tiny file without its sidecar: the real SDXL config does not fit
    shutil.copy(engine.store.find(UNION).path, lone)
    with pytest.raises(ModelFormatError, match="union ControlNet"):
        load_controlnet(lone, "sdxl")


@pytest.mark.parametrize("preprocessor, control_type, index", [
    ("canny", "auto", 3), ("none", "depth", 1), ("lineart_standard", "auto", 3), ("none", "tile", 6),
])
def test_control_type_reaches_the_model(engine, files, preprocessor, control_type, index):
    unit = {"model": UNION, "preprocessor": preprocessor, "control_type": control_type}
    result, seen = _run_capturing(engine, _job(files, unit))
    types, indices, conds = seen[UNION]
    assert indices == [index]
    assert types.shape == (2, 8) and (types.argmax(dim=1) == index).all() and types.sum() == 2
    assert len(conds) == 1 and result.images[0].size == (64, 64)


def test_outputs_differ_per_control_type(engine, files):
    from ctrlgen.core.engine.jobs import parse_job

    outputs = {}
    for control_type in ("canny", "depth", "openpose"):
        unit = {"model": UNION, "preprocessor": "none", "control_type": control_type}
        outputs[control_type] = np.asarray(engine.run(parse_job(_job(files, unit))).images[0])
    assert not np.array_equal(outputs["canny"], outputs["depth"])
    assert not np.array_equal(outputs["depth"], outputs["openpose"])


def test_units_on_one_union_model_run_as_one_multi_condition_pass(engine, files):
    units = [{"model": UNION, "preprocessor": "canny"},
             {"model": UNION, "preprocessor": "none", "control_type": "depth", "weight": 0.5}]
    calls = []
    model = _union_model(engine)
    handle = model.register_forward_pre_hook(lambda m, a, k: calls.append(list(k["control_type_idx"])),
                                             with_kwargs=True)
    try:
        from ctrlgen.core.engine.jobs import parse_job

        result = engine.run(parse_job(_job(files, *units)))
    finally:
        handle.remove()
    assert calls == [[3, 1], [3, 1]]  # one call per step with both conditions
    assert len(result.control_maps) == 2


def test_units_on_different_union_models_run_side_by_side(engine, files):
    units = [{"model": UNION, "preprocessor": "canny"}, {"model": UNION_FOLDER, "preprocessor": "depth_midas",
                                                        "control_type": "depth"}]
    units[1]["preprocessor"] = "none"
    _, seen = _run_capturing(engine, _job(files, *units), names=(UNION, UNION_FOLDER))
    assert seen[UNION][1] == [3] and seen[UNION_FOLDER][1] == [1]


def test_union_with_control_mode(engine, files):
    from ctrlgen.core.engine.jobs import parse_job

    plain = np.asarray(engine.run(parse_job(_job(files, {"model": UNION, "preprocessor": "canny"}))).images[0])
    soft = np.asarray(engine.run(parse_job(_job(
        files, {"model": UNION, "preprocessor": "canny", "control_mode": "prompt"}))).images[0])
    assert not np.array_equal(plain, soft)
    with pytest.raises(JobError, match="give them one control_mode"):
        engine.run(parse_job(_job(files, {"model": UNION, "preprocessor": "canny", "control_mode": "prompt"},
                                  {"model": UNION, "preprocessor": "none", "control_type": "depth"})))


def test_union_in_an_img2img_job(engine, files):
    unit = {"model": UNION, "preprocessor": "tile_resample"}
    result, seen = _run_capturing(engine, _job(files, unit, task="img2img", strength=0.6))
    assert seen[UNION][1] == [6]  # tile
    assert result.images[0].size == (64, 64)


def test_repaint_in_an_inpaint_job(engine, files):
    unit = {"model": UNION, "preprocessor": "inpaint"}
    job = _job(files, unit, mask=files["mask"], strength=1.0, inpaint={"feather_px": 0})
    result, seen = _run_capturing(engine, job)
    _, indices, conds = seen[UNION]
    assert indices == [7]  # repaint
    masked = files["raw"] > 127
    cond = conds[0][-1].permute(1, 2, 0).numpy()  # the positive row, in [0, 1]
    assert (cond[masked] == 0).all() and cond[~masked].max() > 0
    output = np.asarray(result.images[0])
    assert np.array_equal(output[~masked], files["picture"][~masked])


@pytest.mark.parametrize("units, message", [
    ([{"model": UNION, "preprocessor": "canny"}, {"model": "tiny-controlnet-sdxl", "preprocessor": "canny"}],
     r"cannot run with regular ControlNets"),
    ([{"model": UNION, "preprocessor": "none"}], r"control\[0\].*set control\[0\].control_type to one of"),
    ([{"model": "tiny-controlnet-sdxl", "preprocessor": "canny", "control_type": "depth"}],
     r"control\[0\].control_type='depth' is for union ControlNets"),
])
def test_invalid_union_jobs_are_rejected(engine, files, units, message):
    from ctrlgen.core.engine.jobs import parse_job

    with pytest.raises(JobError, match=message):
        engine.run(parse_job(_job(files, *units)))


def test_control_type_beyond_the_model_is_rejected():
    from ctrlgen.adapters.controlnet.union import control_type_for, resolve_control_type

    assert resolve_control_type("auto", "dw_openpose_full", 6, "control[0]") == 0
    assert control_type_for("shuffle") is None and control_type_for("softedge_pidinet") == "hed"
    with pytest.raises(JobError, match="needs a union ControlNet with 8 or more control types.*this one has 6"):
        resolve_control_type("repaint", "none", 6, "control[0]")


class TestUnionContract(AdapterContract):
    """A union job leaves the cached SDXL pipeline clean; a plain job after it matches a fresh one."""

    adapter = "controlnet"

    @pytest.fixture
    def contract_model_root(self, union_root):
        return union_root

    def adapter_job(self, image):
        return {
            "model": "tiny-sdxl", "prompt": "a cat", "seed": 1, "steps": 2, "width": 64, "height": 64,
            "image": image,
            "control": [{"model": UNION, "preprocessor": "canny", "control_mode": "controlnet"},
                        {"model": UNION, "preprocessor": "none", "control_type": "segment", "control_mode": "controlnet"}],
        }
