"""Contract tests any preprocessor or adapter plugin can run against itself.

Use them by subclassing in your plugin's tests (pytest collects the ``test_*`` methods)::

    from ctrlgen.testing.contracts import PreprocessorContract

    class TestPosterize(PreprocessorContract):
        preprocessor = "posterize"
        params = {"levels": 3}          # params used by the contract runs

The contract is the one ctrlgen promises hosts: output ``uint8`` H×W×3 at the input's
size for RGB, RGBA, grey and 16-bit input, the same output twice for the same input,
and a clear :class:`~ctrlgen.core.errors.ParamError` for every bad parameter.

Adapters subclass :class:`AdapterContract` the same way and return a small job that uses
the adapter from ``adapter_job``; the contract runs it on the tiny models (the
``tiny_model_root`` fixture of ctrlgen's pytest plugin) and checks that the cached pipeline
is left exactly as it was after success, after a cancel and after an error in the job.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest

from ctrlgen.core.errors import ImageError, ParamError


def contract_image(width: int = 97, height: int = 75, seed: int = 0) -> np.ndarray:
    """A synthetic RGB test card (odd size on purpose): shapes with hard edges, a gradient, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = (xx * 255 // max(1, width - 1)).astype(np.uint8)
    image[..., 1] = (yy * 255 // max(1, height - 1)).astype(np.uint8)
    image[..., 2] = 60
    image[height // 5 : height // 2, width // 6 : width // 2] = (250, 250, 250)
    circle = (xx - width * 0.7) ** 2 + (yy - height * 0.6) ** 2 < (min(width, height) * 0.2) ** 2
    image[circle] = (20, 20, 200)
    image[height - 8 : height - 5, :] = (0, 0, 0)
    image = np.clip(image.astype(np.int16) + rng.integers(-6, 7, image.shape), 0, 255).astype(np.uint8)
    return image


class PreprocessorContract:
    """Mixin: set ``preprocessor`` (its registered name) and optionally ``params``.

    Override :meth:`contract_input` to feed a more meaningful image (e.g. a face for a
    face detector), and ``deterministic = False`` for a stochastic preprocessor
    (e.g. shuffle without a seed param).
    """

    preprocessor: ClassVar[str] = ""
    params: ClassVar[dict[str, Any]] = {}
    deterministic: ClassVar[bool] = True

    def contract_input(self) -> np.ndarray:
        return contract_image()

    def run_preprocessor(self, image: Any, **overrides: Any):
        from ctrlgen.core.engine.preprocess import preprocess

        return preprocess(self.preprocessor, image, **{**self.params, **overrides})

    def spec(self):
        from ctrlgen.core.plugins.manager import get_registry

        return get_registry("preprocessors").get(self.preprocessor)

    def test_contract_spec_is_well_formed(self):
        spec = self.spec()
        assert spec.description, f"{spec.name}: give the spec a description (hosts show it)"
        for param in spec.params:
            assert param.description, f"{spec.name}.{param.name}: describe the parameter"
            param.validate(param.default, spec.name)  # every default is valid

    def test_contract_output_is_uint8_rgb_at_input_size(self):
        image = self.contract_input()
        result = self.run_preprocessor(image)
        assert result.image.dtype == np.uint8
        assert result.image.shape == (image.shape[0], image.shape[1], 3)

    @pytest.mark.parametrize("layout", ["grey", "rgba", "uint16", "float"])
    def test_contract_accepts_other_input_layouts(self, layout):
        image = self.contract_input()
        height, width = image.shape[:2]
        if layout == "grey":
            variant = image.mean(axis=2).astype(np.uint8)
        elif layout == "rgba":
            variant = np.dstack([image, np.full((height, width), 255, np.uint8)])
        elif layout == "uint16":
            variant = image.astype(np.uint16) * 257
        else:
            variant = image.astype(np.float32) / 255.0
        result = self.run_preprocessor(variant)
        assert result.image.shape == (height, width, 3) and result.image.dtype == np.uint8
        if layout in ("rgba", "uint16", "float") and self.deterministic:
            # Opaque RGBA, exact 16-bit and float copies carry the same picture as the RGB input.
            assert np.array_equal(result.image, self.run_preprocessor(image).image)

    def test_contract_deterministic(self):
        if not self.deterministic:
            pytest.skip("declared non-deterministic")
        image = self.contract_input()
        first = self.run_preprocessor(image)
        second = self.run_preprocessor(image.copy())
        assert np.array_equal(first.image, second.image)

    def test_contract_rejects_unknown_param(self):
        with pytest.raises(ParamError, match="no parameter 'no_such_param'"):
            self.run_preprocessor(self.contract_input(), no_such_param=1)

    def test_contract_rejects_out_of_range_params(self):
        spec = self.spec()
        image = self.contract_input()
        for param in spec.params:
            bad_values = []
            if param.type in ("int", "float"):
                if param.min is not None:
                    bad_values.append(param.min - 1)
                if param.max is not None:
                    bad_values.append(param.max + 1)
                bad_values.append("not-a-number")
            elif param.type == "choice":
                bad_values.append("__not_a_choice__")
            elif param.type == "bool":
                bad_values.append("maybe")
            for value in bad_values:
                with pytest.raises(ParamError) as info:
                    self.run_preprocessor(image, **{param.name: value})
                assert param.name in str(info.value), f"error for {param.name} must name it: {info.value}"

    @pytest.mark.parametrize("shape", [(0, 10, 3), (10, 0), (3, 3, 7)])
    def test_contract_rejects_unusable_images(self, shape):
        with pytest.raises(ImageError):
            self.run_preprocessor(np.zeros(shape, np.uint8))


def pipeline_fingerprint(pipeline: Any) -> dict[str, Any]:
    """Everything an adapter could leave changed on a pipeline, in comparable form.

    Component identities and types, every attention processor, forward (pre-)hooks,
    parameter/buffer storage and values, the scheduler's class and config, and the
    pipeline's own config. Two fingerprints compare equal only if nothing was left behind.
    """
    import torch

    result: dict[str, Any] = {"pipeline_class": type(pipeline).__name__,
                              "config": dict(pipeline.config)}
    for name, component in sorted(pipeline.components.items()):
        if component is None:
            result[name] = None
            continue
        entry: dict[str, Any] = {"type": type(component).__name__, "id": id(component)}
        if isinstance(component, torch.nn.Module):
            if hasattr(component, "attn_processors"):
                entry["attn_processors"] = {k: (type(v).__name__, id(v))
                                            for k, v in component.attn_processors.items()}
            entry["hooks"] = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in component.modules())
            entry["training"] = component.training
            with torch.no_grad():
                entry["tensors"] = {k: (v.data_ptr(), tuple(v.shape), str(v.dtype), float(v.double().sum()))
                                    for k, v in component.state_dict().items()}
        elif name == "scheduler":
            entry["config"] = dict(component.config)
        result[name] = entry
    return result


class ContractJobError(RuntimeError):
    """Raised by :class:`AdapterContract` inside a running job (from its first progress event)."""


class AdapterContract:
    """Mixin for adapters: jobs using the adapter leave the cached pipeline exactly as it was.

    Set ``adapter`` and implement :meth:`adapter_job` returning a job dict (model names
    from the ``tiny_model_root`` fixture: ``tiny-sd15``, ``tiny-sdxl``,
    ``tiny-controlnet-sd15``, ...) that uses the adapter; ``image`` is a path to a 64×64
    test photo. Override the ``contract_model_root`` fixture when the adapter needs model
    files of its own (return an object with a ``root`` folder, as ``tiny_model_root`` is).

    Checked: the spec is well formed; after a job with the adapter, after that job is
    cancelled at its first step and after an exception raised inside it at its first step,
    :func:`pipeline_fingerprint` of the cached pipeline is unchanged; a plain job after the
    adapter's (and after the failed one) gives the same pixels as on a fresh pipeline.
    """

    adapter: ClassVar[str] = ""

    def adapter_job(self, image: str) -> dict[str, Any]:
        raise NotImplementedError("return a job dict that uses the adapter")

    def plain_job(self, image: str) -> dict[str, Any]:
        job = dict(self.adapter_job(image))
        for key in ("control", "adapters"):
            job.pop(key, None)
        return job

    @pytest.fixture
    def contract_model_root(self, tiny_model_root):
        """The model root the contract's jobs use; override to add the adapter's own weights."""
        return tiny_model_root

    @pytest.fixture
    def contract_setup(self, contract_model_root, tmp_path, torch_single_thread):
        from PIL import Image

        from ctrlgen.core.engine.engine import Engine
        from ctrlgen.core.models.store import ModelStore
        from ctrlgen.core.plugins.specs import ModelRoot

        image = tmp_path / "contract.png"
        Image.fromarray(contract_image(64, 64)).save(image)
        store = ModelStore([ModelRoot(contract_model_root.root)])
        return Engine(store=store, device="cpu"), str(image), store

    def _run(self, engine, job: dict[str, Any], **kwargs):
        from ctrlgen.core.engine.jobs import parse_job

        return engine.run(parse_job(job), **kwargs)

    def test_contract_adapter_spec_is_well_formed(self):
        from ctrlgen.core.plugins.manager import get_registry

        spec = get_registry("adapters").get(self.adapter)
        assert spec.description
        for param in spec.params:
            assert param.description, f"{spec.name}.{param.name}: describe the parameter"

    def test_contract_restores_pipeline_after_success_and_cancel(self, contract_setup):
        import threading

        from ctrlgen.core.errors import CancelledError

        engine, image, _ = contract_setup
        self._run(engine, self.plain_job(image))  # load and cache the pipeline
        (base,) = engine._pipelines.values()
        before = pipeline_fingerprint(base)
        self._run(engine, self.adapter_job(image))
        assert pipeline_fingerprint(base) == before, "the adapter left the cached pipeline changed"
        cancel = threading.Event()

        def cancel_at_first_step(event):
            if event.kind == "progress":
                cancel.set()

        with pytest.raises(CancelledError):
            self._run(engine, {**self.adapter_job(image), "steps": 5}, on_event=cancel_at_first_step,
                      cancel=cancel)
        assert pipeline_fingerprint(base) == before, "a cancelled job left the cached pipeline changed"

    def test_contract_restores_pipeline_after_an_error_in_the_job(self, contract_setup):
        from ctrlgen.core.engine.engine import Engine

        engine, image, store = contract_setup
        self._run(engine, self.plain_job(image))  # load and cache the pipeline
        (base,) = engine._pipelines.values()
        before = pipeline_fingerprint(base)

        def fail_at_first_step(event):
            if event.kind == "progress":
                raise ContractJobError("raised inside the job by AdapterContract")

        with pytest.raises(ContractJobError):
            self._run(engine, {**self.adapter_job(image), "steps": 3}, on_event=fail_at_first_step)
        assert pipeline_fingerprint(base) == before, "a job that failed left the cached pipeline changed"
        after = np.asarray(self._run(engine, self.plain_job(image)).images[0])
        fresh = np.asarray(self._run(Engine(store=store, device="cpu"), self.plain_job(image)).images[0])
        assert np.array_equal(after, fresh), "a plain job after a failed adapter job differs from a fresh pipeline's"

    def test_contract_plain_job_after_adapter_matches_fresh_pipeline(self, contract_setup):
        from ctrlgen.core.engine.engine import Engine

        engine, image, store = contract_setup
        self._run(engine, self.adapter_job(image))
        after = np.asarray(self._run(engine, self.plain_job(image)).images[0])
        fresh = np.asarray(self._run(Engine(store=store, device="cpu"), self.plain_job(image)).images[0])
        assert np.array_equal(after, fresh), "a plain job after the adapter differs from a fresh pipeline's"
