"""LoRA: kohya and PEFT files, several at once, A1111 prompt tags, LCM-LoRA, exact restoration."""

from __future__ import annotations

import numpy as np
import pytest

from ctrlgen.adapters.lora.loading import parse_tag, take_prompt_tags
from ctrlgen.core.engine.engine import Engine
from ctrlgen.core.engine.jobs import parse_job
from ctrlgen.core.errors import CtrlgenError, JobError, ModelNotFoundError, ParamError
from ctrlgen.core.models.store import ModelStore
from ctrlgen.testing.contracts import AdapterContract, pipeline_fingerprint

pytest.importorskip("peft", reason="diffusers loads LoRAs through peft")
pytestmark = pytest.mark.usefixtures("torch_single_thread")



@pytest.fixture
def engine(addon_engine):
    return addon_engine


def job(architecture="sd15", **extra):
    return parse_job({"model": f"tiny-{architecture}", "prompt": "a cat", "seed": 4, "steps": 2, "width": 64,
                      "height": 64, **extra})


_RESULTS: dict[str, np.ndarray] = {}


def image_of(result):
    return np.asarray(result.images[0]).astype(np.int16)


def run(engine, **extra):
    """The job's image; identical jobs are run once (LoRA loading dominates these tests' time)."""
    key = job(**extra).model_dump_json()
    if key not in _RESULTS:
        _RESULTS[key] = image_of(engine.run(job(**extra)))
    return _RESULTS[key]


def lora(model, **params):
    return {"type": "lora", "model": model, **params}


class TestLoraContract(AdapterContract):
    """A kohya LoRA and a PEFT-format LoRA together."""

    adapter = "lora"

    @pytest.fixture
    def contract_model_root(self, addon_model_root):
        return addon_model_root

    def adapter_job(self, image):
        return {"model": "tiny-sd15", "prompt": "a cat", "seed": 1, "steps": 2, "width": 64, "height": 64,
                "adapters": [lora("tiny-lora-sd15", weight=0.7), lora("tiny-lora-sd15-peft", text_encoder_weight=0.3)]}


@pytest.mark.parametrize("architecture", ["sd15", "sdxl"])
def test_weights_scale_the_unet_and_text_encoder_parts(engine, architecture):
    name = f"tiny-lora-{architecture}"
    plain = run(engine, architecture=architecture)
    base = engine.load_pipeline(engine.resolve_checkpoint(job(architecture)))
    before = pipeline_fingerprint(base)  # after a first job: transformers adds its hooks on first use
    variants = {"full": {}, "te_only": {"weight": 0, "text_encoder_weight": 1}}
    if architecture == "sd15":
        variants.update(half={"weight": 0.5}, unet_only={"text_encoder_weight": 0})
    results = {key: run(engine, architecture=architecture, adapters=[lora(name, **params)])
               for key, params in variants.items()}
    zero = run(engine, architecture=architecture, adapters=[lora(name, weight=0, text_encoder_weight=0)])
    assert np.array_equal(zero, plain)  # scale 0 is no LoRA, bit for bit
    names = list(results)
    for index, key in enumerate(names):
        assert np.abs(results[key] - plain).mean() > 0.5, key
        for other in names[index + 1:]:
            assert not np.array_equal(results[key], results[other]), (key, other)
    assert pipeline_fingerprint(base) == before


def test_several_loras_combine(engine):
    one = run(engine, adapters=[lora("tiny-lora-sd15")])  # the same job as "full" above
    other = run(engine, adapters=[lora("tiny-lora-sd15-peft")])
    both = run(engine, adapters=[lora("tiny-lora-sd15"), lora("tiny-lora-sd15-peft")])
    assert not np.array_equal(both, one) and not np.array_equal(both, other)


def test_prompt_tags_load_loras_like_explicit_uses(engine):
    explicit = run(engine, adapters=[lora("tiny-lora-sd15", weight=0.8)])
    tagged = run(engine, prompt="a cat <lora:tiny-lora-sd15:0.8>", adapters=[{"type": "lora"}])
    assert np.array_equal(tagged, explicit)
    # A1111 order: <lora:name:te:unet>
    explicit_split = run(engine, adapters=[lora("tiny-lora-sd15", weight=0.8, text_encoder_weight=0.3)])
    tagged_split = run(engine, prompt="a cat <lora:tiny-lora-sd15:0.3:0.8>", adapters=[{"type": "lora"}])
    assert np.array_equal(tagged_split, explicit_split)
    in_negative = run(engine, negative_prompt="<lora:tiny-lora-sd15:0.8>", adapters=[{"type": "lora"}])
    assert np.array_equal(in_negative, explicit)


def test_lcm_lora_with_the_lcm_sampler(engine):
    plain = run(engine, sampler="LCM", cfg_scale=1.0)
    base = engine.load_pipeline(engine.resolve_checkpoint(job()))
    before = pipeline_fingerprint(base)
    with_lcm = run(engine, sampler="LCM", cfg_scale=1.0, adapters=[lora("tiny-lcm-lora-sd15")])
    assert np.abs(with_lcm - plain).mean() > 0.5
    assert pipeline_fingerprint(base) == before


def test_a_failed_load_leaves_nothing_behind(engine, tmp_path, addon_model_root):
    from safetensors.numpy import load_file, save_file

    base = engine.load_pipeline(engine.resolve_checkpoint(job()))
    before = pipeline_fingerprint(base)
    broken = tmp_path / "broken-lora.safetensors"  # not a model file: refused before anything loads
    broken.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(CtrlgenError, match=r"adapters\[1\] \(lora\)\.model .* cannot be used"):
        engine.run(job(adapters=[lora("tiny-lora-sd15"), lora(str(broken))]))
    assert pipeline_fingerprint(base) == before
    # A LoRA by its header whose tensors do not fit fails while loading, after the first one loaded.
    tensors = load_file(addon_model_root.root / "models" / "Lora" / "tiny-lora-sd15.safetensors")
    misfit = tmp_path / "misfit-lora.safetensors"
    save_file({name: np.zeros((value.shape[0] + 1, *value.shape[1:]), value.dtype) if ".lora_up." in name else value
               for name, value in tensors.items()}, misfit)
    with pytest.raises(CtrlgenError, match="lora use 2"):
        engine.run(job(adapters=[lora("tiny-lora-sd15"), lora(str(misfit))]))
    assert pipeline_fingerprint(base) == before
    assert not hasattr(base.unet, "peft_config") or not base.unet.peft_config


def test_another_adapters_lora_stays_active_with_its_scale(engine, addon_model_root):
    from peft.tuners.tuners_utils import BaseTunerLayer

    from ctrlgen.core.models.identify import load_state_dict

    base = engine.load_pipeline(engine.resolve_checkpoint(job()))
    path = addon_model_root.root / "models" / "Lora" / "tiny-lora-sd15-peft.safetensors"
    base.load_lora_weights(load_state_dict(path), adapter_name="faceid")
    base.set_adapters(["faceid"], [0.4])
    try:
        with_foreign = image_of(engine.run(job()))
        engine.run(job(adapters=[lora("tiny-lora-sd15")]))
        layer = next(m for m in base.unet.modules() if isinstance(m, BaseTunerLayer))
        assert base.get_list_adapters() == {"unet": ["faceid"], "text_encoder": ["faceid"]}
        assert layer.active_adapters == ["faceid"]
        assert layer.scaling["faceid"] == pytest.approx(0.4 * layer.lora_alpha["faceid"] / layer.r["faceid"])
        assert np.array_equal(image_of(engine.run(job())), with_foreign)
    finally:
        base.unload_lora_weights()


@pytest.mark.parametrize(
    ("extra", "error", "message"),
    [
        ({"adapters": [lora("no-such-lora")]}, ModelNotFoundError,
         "adapters[0] (lora).model: Model 'no-such-lora' was not found"),
        ({"prompt": "<lora:missing-one:1>", "adapters": [{"type": "lora"}]}, ModelNotFoundError,
         "prompt tag <lora:missing-one:1>"),
        ({"prompt": "<lora:tiny-lora-sd15:strong>", "adapters": [{"type": "lora"}]}, JobError,
         "'strong' is not a number"),
        ({"adapters": [lora("tiny-lora-sdxl")]}, JobError, "is a LoRA for sdxl models, but the checkpoint is sd15"),
        ({"adapters": [lora("tiny-lora-sd15", weight=9)]}, ParamError, "weight=9.0 is above its maximum 5"),
        ({"adapters": [lora("tiny-lora-sd15", text_encoder_weight="lots")]}, ParamError,
         "text_encoder_weight='lots' is not a valid float"),
    ],
)
def test_bad_requests_are_refused_with_clear_messages(engine, extra, error, message):
    with pytest.raises(error) as info:
        engine.run(job(**extra))
    assert message in str(info.value)


def test_prompt_tags_parse_as_a1111_does():
    text, requests = take_prompt_tags("a <lora:style:0.6> cat, <LORA:sub/detail:0.5:1.2>, <lyco:x:te=0.2:unet=0.9>")
    assert text == "a  cat, , "
    assert [(r.model, r.weight, r.text_encoder_weight) for r in requests] == [
        ("style", 0.6, 0.6), ("sub/detail", 1.2, 0.5), ("x", 0.9, 0.2)]
    assert parse_tag("<lora:plain>", "plain").weight == 1.0
    assert take_prompt_tags("<hypernet:h:1> kept") == ("<hypernet:h:1> kept", [])
    with pytest.raises(CtrlgenError, match="names no LoRA"):
        parse_tag("<lora::1>", ":1")


@pytest.mark.weights
def test_real_lora_changes_a_real_checkpoint():
    import os

    roots = [root for root in os.environ.get("CTRLGEN_WEIGHTS_ROOTS", "").split(os.pathsep) if root]
    store = ModelStore(roots)
    checkpoints = [e for e in store.entries("checkpoints") if e.identity.architecture == "sd15"]
    loras = [e for e in store.entries("loras") if e.identity.architecture == "sd15" and e.identity.format != "lycoris"]
    if not checkpoints or not loras:
        pytest.skip("needs a real SD1.5 checkpoint and an SD1.5 LoRA in the model store")
    engine = Engine(store=store)
    request = {"model": str(checkpoints[0].path), "prompt": "a cat", "seed": 1, "steps": 4, "width": 256,
               "height": 256}
    plain = np.asarray(engine.run(parse_job(request)).images[0])
    changed = np.asarray(engine.run(parse_job({**request, "adapters": [lora(str(loras[0].path))]})).images[0])
    assert not np.array_equal(plain, changed)
    assert np.array_equal(np.asarray(engine.run(parse_job(request)).images[0]), plain)


def test_tags_work_without_listing_the_adapter(engine):
    """The adapter is always on (as in A1111): a tag alone loads the LoRA."""
    listed = run(engine, prompt="a cat <lora:tiny-lora-sd15:0.8>", adapters=[{"type": "lora"}])
    unlisted = run(engine, prompt="a cat <lora:tiny-lora-sd15:0.8>")
    assert np.array_equal(unlisted, listed)
    assert not np.array_equal(unlisted, run(engine))


def test_files_are_read_once_per_engine_and_each_job_is_the_same(addon_model_root, monkeypatch):
    """The LoRA's file is read once per engine (kohya and PEFT layouts, whose keys diffusers'
    converters pop and rename); the second job gives the first's pixels."""
    import ctrlgen.core.models.identify as identify
    from ctrlgen.core.plugins.specs import ModelRoot

    fresh = Engine(store=ModelStore([ModelRoot(addon_model_root.root)]), device="cpu")
    reads = []
    original = identify.load_state_dict

    def counted(path, *args, **kwargs):
        reads.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(identify, "load_state_dict", counted)
    uses = [lora("tiny-lora-sd15", weight=0.7), lora("tiny-lora-sd15-peft", text_encoder_weight=0.3)]
    first = image_of(fresh.run(job(adapters=uses)))
    lora_reads = [p for p in reads if "lora" in p.lower()]
    assert len(lora_reads) == 2
    second = image_of(fresh.run(job(adapters=uses)))
    assert np.array_equal(first, second)
    assert [p for p in reads if "lora" in p.lower()] == lora_reads
    assert not np.array_equal(first, run(fresh))
