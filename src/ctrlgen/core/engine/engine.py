"""The generation engine: validate a job, resolve models, preprocess, run, report.

One :class:`Engine` caches loaded pipelines and ControlNets by file, so a second job on
the same model only pays for the denoising. Each job runs on a job-local view of the
cached pipeline (``tasks.pipeline_view`` shares the modules, copies nothing), so the cached one is
never mutated by a job's scheduler, ControlNets or adapters.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ctrlgen.core.engine.jobs import Job
from ctrlgen.core.engine.regions import check_placement, job_offset, read_pixels
from ctrlgen.core.errors import CancelledError, CtrlgenError, ImageError, JobError
from ctrlgen.core.images import fit, pixel_perfect_resolution, to_mask, to_rgb
from ctrlgen.core.models.locks import LOAD_LOCK
from ctrlgen.core.plugins.events import JobEvent
from ctrlgen.core.plugins.manager import emit_event, get_registry
from ctrlgen.core.plugins.specs import check_text, validate_params

# Reads one image reference of a job (``(reference, what) -> uint8 array``: H×W grey, H×W×3
# RGB or H×W×4 RGBA). The default reads files; the server resolves its uploads.
ImageSource = Callable[[str, str], np.ndarray]
# Model loads are serialised across the engines of one process: LOAD_LOCK, see ctrlgen.core.models.locks.


@dataclass
class GenerationContext:
    """What an adapter sees while attached: it may replace ``pipeline`` with a job-local
    view and add to ``call_kwargs``; everything it changes it restores on exit."""

    job: Job
    engine: Engine
    pipeline: Any
    architecture: str
    call_kwargs: dict[str, Any]
    width: int
    height: int
    # The prompt texts to encode; an adapter may rewrite them before encoding (A1111's
    # <lora:name:weight> tags are taken out of the prompt by the LoRA adapter, for example).
    prompt: str = ""
    negative_prompt: str = ""
    # Called at the end of every denoising step as ``callback(pipe, step, timestep, tensors)``;
    # a returned dict updates the loop's tensors (see diffusers' callback_on_step_end).
    step_callbacks: list[Callable[..., Any]] = field(default_factory=list)
    # Control images adapters computed (InstantID's keypoints, ...), returned with the result.
    control_maps: list[np.ndarray] = field(default_factory=list)
    # Where the job's image references are read from (files by default; the server's uploads).
    image_source: ImageSource | None = None
    # Inpaint jobs: ctrlgen.core.engine.tasks.InpaintFrame (canvas, mask, region), for adapters' maps.
    inpaint_frame: Any = None
    # Regional prompts (ctrlgen.core.engine.composition.PromptRegion), set by the region adapter
    # and encoded with the prompt in step 6.
    regions: list[Any] = field(default_factory=list)
    # Several images per seed (LayerDiffuse's SD1.5 layer modes), side by side in the batch:
    # (label, keeps alpha) of each, in batch order; empty: one image per seed.
    frames: list[tuple[str, bool]] = field(default_factory=list)

    @property
    def device(self) -> str:
        return self.engine.device.device

    @property
    def dtype(self):
        return self.engine.device.dtype

    @property
    def store(self):
        return self.engine.store

    def read_image(self, path: str, what: str = "image") -> np.ndarray:
        """The RGB pixels of one of the job's image references (a path, or an upload id)."""
        return read_image(path, what, self.image_source)


@dataclass
class PreparedUnit:
    """One ControlNet unit, checked: its model entry, validated params and (once computed) its
    control map. From :meth:`Engine.check` ``control_image`` is None (no map computed yet)."""

    index: int
    model_entry: Any
    control_image: np.ndarray | None
    params: dict[str, Any]
    preprocessor: str
    preprocessor_params: dict[str, Any]
    # The map was made from the inpaint frame's region (only-masked), not the whole picture.
    in_region: bool = False


@dataclass
class CheckedJob:
    """What :meth:`Engine.check` found, before anything loads: the checkpoint, its architecture,
    the ControlNet units (maps not computed) and the adapters with their validated uses.
    ``checkpoint`` is None for ``preprocess`` jobs."""

    job: Job
    checkpoint: Any = None
    architecture: str = ""
    units: list[PreparedUnit] = field(default_factory=list)
    adapters: list[tuple[Any, list[dict[str, Any]]]] = field(default_factory=list)


def _at(where: str, exc: CtrlgenError) -> CtrlgenError:
    """``exc``, same type, with the field path ``where`` in front of its message."""
    exc.args = (f"{where}: {exc}",)
    return exc.with_traceback(None)


@dataclass
class JobResult:
    job: Job
    job_id: str
    images: list[Any]  # PIL images at the requested size
    seeds: list[int]
    control_maps: list[np.ndarray] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    memory: Any = None  # the MemoryPlan the job ran with (offload, VAE tiling/slicing, why)
    data: list[Any] = field(default_factory=list)  # preprocess jobs: each map's data (OpenPose JSON, ...)
    # (x0, y0, x1, y1) in the result image's own frame: the pixels that may differ from the input
    # image (inpaint and fix: the feathered mask's bounds); None when the whole image is new.
    changed_box: tuple[int, int, int, int] | None = None
    # Where the result sits on the host's canvas: job.image_offset, or (0, 0).
    offset: tuple[int, int] = (0, 0)
    # What each image is, where a seed gives several (LayerDiffuse: "foreground", "background",
    # "blended"); empty: one image per seed.
    labels: list[str] = field(default_factory=list)

    def crop(self, index: int = 0, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """Image ``index``'s pixels (uint8, RGB or RGBA) inside ``box`` (default: ``changed_box``,
        else the whole image), read without converting the rest of the image."""
        image = self.images[index]
        box = box or self.changed_box or (0, 0, image.width, image.height)
        return np.asarray(image.crop(box) if tuple(box) != (0, 0, image.width, image.height) else image)

    def save(self, folder: Path, stem: str = "ctrlgen") -> list[Path]:
        """Write PNGs carrying the job's parameters (A1111 ``parameters`` + ``ctrlgen-job`` JSON)."""
        from PIL.PngImagePlugin import PngInfo

        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for index, (image, seed, infotext) in enumerate(zip(self.images, self.seeds, self.infotexts, strict=False)):
            info = PngInfo()
            info.add_text("parameters", infotext)
            job_json = self.job.model_dump(mode="json")
            job_json["seed"] = seed
            info.add_text("ctrlgen-job", json.dumps(job_json, sort_keys=True))
            if index < len(self.data) and self.data[index]:  # OpenPose JSON and the like
                info.add_text("ctrlgen-data", json.dumps(self.data[index], sort_keys=True))
            path = folder / f"{stem}-{self.job_id[:8]}-{index:02d}.png"
            image.save(path, pnginfo=info)
            paths.append(path)
        return paths


def round_size(width: int, height: int, multiple: int = 8) -> tuple[int, int]:
    """The nearest size the model can denoise (each side a multiple of 8, rounded up)."""
    return (-(-width // multiple) * multiple, -(-height // multiple) * multiple)


def infotext(job: Job, seed: int, model_name: str) -> str:
    """The A1111-style parameters text other tools (and A1111's PNG info tab) read."""
    fields = [
        f"Steps: {job.steps}",
        f"Sampler: {job.sampler}",
        f"CFG scale: {job.cfg_scale:g}",
        f"Seed: {seed}",
        f"Size: {job.width}x{job.height}",
        f"Model: {model_name}",
    ]
    for index, unit in enumerate(job.control):
        extra = ", ".join(f"{k}: {v}" for k, v in sorted(unit.adapter_params().items()))
        fields.append(
            f'ControlNet {index}: "Module: {unit.preprocessor}, Model: {unit.model}'
            + (f", {extra}" if extra else "")
            + '"'
        )
    fields.append("Generator: ctrlgen")
    text = job.prompt
    if job.negative_prompt:
        text += f"\nNegative prompt: {job.negative_prompt}"
    return text + "\n" + ", ".join(fields)


class Engine:
    """Runs jobs. Thread-compatible: one job at a time per engine (the server's worker)."""

    def __init__(self, store: Any = None, device: str | None = None, precision: str | None = None,
                 memory: str | None = None, vae_tiling: str | None = None, *, allow_paths: bool = True) -> None:
        """``device`` (auto, cpu, cuda[:N], mps), ``precision`` (auto, float16, bfloat16, float32),
        ``memory`` (auto, none, model_offload, sequential_offload) and ``vae_tiling`` (auto, on,
        off) default to the settings (config.toml, ``CTRLGEN_*``); see :mod:`ctrlgen.core.engine.memory`.

        ``allow_paths=False`` (the server) makes jobs name models only as the store knows them or
        by paths inside the model folders, and refuses adapter params that name files (see
        :class:`~ctrlgen.core.models.store.ModelStore`); it turns the same switch off on ``store``."""
        from ctrlgen.core.config import load_settings
        from ctrlgen.core.engine.memory import check_modes

        settings = load_settings()
        self.settings = settings
        self._store = store
        self.allow_paths = allow_paths
        if store is not None and not allow_paths:
            store.allow_paths = False
        self._device_preference = device or settings.device
        self._precision = precision or settings.precision
        self.memory = memory or settings.memory
        self.vae_tiling = vae_tiling or settings.vae_tiling
        self.threads = settings.threads  # CPU threads for torch/OpenCV (ctrlgen.core.threads)
        check_modes(self.memory, self.vae_tiling)
        self._device = None
        self._pipelines: dict[str, Any] = {}
        self._offloaded: set[str] = set()  # pipelines whose weights stay in RAM (offloaded per job)
        self._controlnets: dict[str, Any] = {}
        self._vaes: dict[str, Any] = {}
        # Adapters' weights read from files and what their loaders built, kept until unload():
        # key -> (the file signatures it came from, value); see load_file and cached.
        self._adapter_cache: dict[Any, tuple[Any, Any]] = {}
        self._lock = threading.Lock()

    # -- resources ------------------------------------------------------------
    @property
    def store(self):
        if self._store is None:
            from ctrlgen.core.models.store import ModelStore

            self._store = ModelStore.from_settings(self.settings, allow_paths=self.allow_paths)
        return self._store

    @property
    def device(self):
        if self._device is None:
            from ctrlgen.core.models.device import choose_device

            self._device = choose_device(self._device_preference, self._precision)
        return self._device

    def _load_dtype(self):
        # fp32 is what the files load as; naming it makes diffusers warn about every model.
        return None if self.device.dtype_name == "float32" else self.device.dtype

    def load_pipeline(self, entry: Any) -> Any:
        """The cached base pipeline for a store entry (loaded on first use)."""
        key = str(Path(entry.path).resolve())
        if key in self._pipelines:
            return self._pipelines[key]
        with LOAD_LOCK:
            return self._load_pipeline(entry, key)

    def _load_pipeline(self, entry: Any, key: str) -> Any:
        if key not in self._pipelines:
            from ctrlgen.core.engine import tasks
            from ctrlgen.core.models import loading as single_file

            architecture = entry.identity.architecture
            pipeline_class = tasks.pipeline_class(architecture, "txt2img").__name__
            dtype = self._load_dtype()
            if Path(entry.path).is_dir():
                pipe = single_file.load_pipeline_from_folder(entry.path, pipeline_class, torch_dtype=dtype)
            else:
                pipe = single_file.load_pipeline_from_single_file(
                    entry.path, architecture, pipeline_class, torch_dtype=dtype
                )
            plan = self.memory_plan(pipe, architecture, resident=False)
            if plan.offload == "none":
                pipe.to(self.device.device)
            else:
                self._offloaded.add(key)
            pipe.set_progress_bar_config(disable=True)
            self._pipelines[key] = pipe
        return self._pipelines[key]

    def memory_plan(self, pipeline: Any, architecture: str, width: int | None = None, height: int | None = None,
                    batch: int = 1, resident: bool = False):
        """How a job of this size fits on the device (:func:`ctrlgen.core.engine.memory.plan_memory`)."""
        from ctrlgen.core.engine.memory import free_memory, plan_memory, weight_bytes
        from ctrlgen.core.engine.tasks import architecture_spec

        native = architecture_spec(architecture).native_size
        weights, largest = weight_bytes(pipeline)
        return plan_memory(
            memory=self.memory, vae_tiling=self.vae_tiling, device=self.device.device,
            free=free_memory(self.device.device), weights=weights, largest=largest,
            width=width or native, height=height or native, batch=batch,
            dtype_bytes=2 if self.device.dtype_name != "float32" else 4, resident=resident)

    def load_controlnet(self, entry: Any, architecture: str) -> Any:
        key = str(Path(entry.path).resolve())
        if key in self._controlnets:
            return self._controlnets[key]
        with LOAD_LOCK:
            from ctrlgen.core.models import loading as single_file

            model = single_file.load_controlnet(entry.path, architecture, torch_dtype=self._load_dtype())
            # Next to offloaded pipelines ControlNets wait in RAM too; the job's offload moves them.
            self._controlnets[key] = model if self._offloaded else model.to(self.device.device)
        return self._controlnets[key]

    def load_vae(self, entry: Any, like: Any) -> Any:
        """A VAE file or folder from the store (cached), shaped like the pipeline's VAE ``like``."""
        key = str(Path(entry.path).resolve())
        if key in self._vaes:
            return self._vaes[key]
        with LOAD_LOCK:
            from ctrlgen.core.models import loading as single_file

            model = single_file.load_vae(entry.path, like.config, torch_dtype=self._load_dtype())
            self._vaes[key] = model if self._offloaded else model.to(self.device.device)
        return self._vaes[key]

    def cached(self, key: Any, signature: Any, make: Callable[[], Any]) -> Any:
        """What ``make()`` returns, kept by this engine under ``key`` until :meth:`unload` or until
        ``signature`` changes (then made again: a file rewritten in place is read again).
        Adapters keep their weights here, so a second job does not read or load them again."""
        hit = self._adapter_cache.get(key)
        if hit is not None and hit[0] == signature:
            return hit[1]
        with LOAD_LOCK:
            value = make()
        self._adapter_cache[key] = (signature, value)
        return value

    def load_file(self, path: Any, what: str, load: Callable[[], Any]) -> Any:
        """``load()`` for the weights file ``path``, cached by file (path, mtime and size)."""
        return self.cached((what, str(Path(path).resolve())), file_signature(path), load)

    def unload(self) -> None:
        """Free every cached model: pipelines, ControlNets and what adapters and
        preprocessors keep loaded (image encoders, face analysis, annotators)."""
        from ctrlgen.core.models import annotators

        self._adapter_cache.clear()
        self._pipelines.clear()
        self._offloaded.clear()
        self._controlnets.clear()
        self._vaes.clear()
        annotators.unload()
        from ctrlgen.core.models import upscalers

        upscalers.unload()
        with contextlib.suppress(Exception):
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    # -- validation -------------------------------------------------------------
    def check(self, job: Job, images: ImageSource | None = None) -> CheckedJob:
        """Everything about ``job`` that can be known without loading weights, or the first
        problem as a :class:`JobError`, :class:`ParamError` or :class:`ModelNotFoundError` (any
        :class:`CtrlgenError`) whose message starts with the field path (``job.model``,
        ``control[1].preprocessor_params.levels``, ``adapters[0] (ip_adapter).model``).

        It reads the model store (file headers only), the plugin registries and the job's images
        (through ``images``, like :meth:`run`), and loads nothing: :meth:`run` calls it before
        anything loads, and the server calls it before it queues a job. It takes no lock, so it
        may run while another job is running."""
        check_text(job.model_dump(), "job")
        if job.task == "preprocess":
            self._check_preprocess(job, images)
            if job.image_offset is not None:
                check_placement(job, read_pixels(job.image, "job.image", images or load_image_file))
            return CheckedJob(job)
        from ctrlgen.core.engine import detail, tasks

        if job.task == "upscale" or job.hires is not None:  # the upscaler, then the refine's checks
            from ctrlgen.core.engine import upscale

            return upscale.check(self, job, images or load_image_file, CheckedJob)
        if job.task == "fix":  # the checkpoint, the image, then each pass (step 4 below)
            entry = self.resolve_checkpoint(job)
            picture = read_pixels(job.image, "job.image", images or load_image_file)
            check_placement(job, picture)
            detail.check_passes(self, job, images or load_image_file, picture)
            return CheckedJob(job, entry, entry.identity.architecture)

        # 1. The checkpoint, and whether its architecture can do this task (with ControlNets).
        entry = self.resolve_checkpoint(job)
        architecture = entry.identity.architecture
        arch = tasks.architecture_spec(architecture)
        if not arch.pipelines.get((job.task, False)):
            arch.pipeline_class(job.task)  # raises, naming what it can do (no diffusers import here)
        if job.control and not any(arch.pipelines.get((job.task, kind)) for kind in (True, "union")):
            arch.pipeline_class(job.task, True)
        if entry.identity.variant == "inpaint" and job.task != "inpaint":
            raise JobError(
                f"job.model: {job.model!r} is an inpainting checkpoint (9-channel UNet); it can only inpaint. "
                "Give a mask (or outpaint), or pick a regular checkpoint for txt2img/img2img")
        # 2. The task's own inputs: the image, the mask (its size, that it selects something)
        #    and the outpainted canvas (within the size limit).
        self._check_task_inputs(job, images)
        # 3. ControlNet units and the other adapters: names, params, models, images.
        units = self.check_units(job, architecture, images)
        adapters = self.prepare_adapters(job, architecture, images)
        # 4. The fix passes (job.detail): detectors and their params, each pass's own overrides
        #    and ControlNet units, checked as the inpaint jobs they become.
        detail.check_passes(self, job, images or load_image_file)
        return CheckedJob(job, entry, architecture, units, adapters)

    def resolve_checkpoint(self, job: Job) -> Any:
        """The store entry of ``job.model``: found, readable, a full checkpoint of an
        architecture ctrlgen runs (errors name ``job.model``)."""
        try:
            entry = self.store.find(job.model, category=("checkpoints", "diffusers"))
        except CtrlgenError as exc:
            raise _at("job.model", exc) from None
        architecture = entry.identity.architecture
        problem = entry.identity.details.get("error")
        if problem:
            raise JobError(f"job.model: {job.model!r} cannot be used: {problem}")
        from ctrlgen.core.engine.tasks import architecture_spec

        try:
            architecture_spec(architecture)
        except JobError as exc:
            raise JobError(f"job.model: {job.model!r} ({entry.path}) is a {architecture} model: {exc}") from None
        if entry.identity.kind not in ("checkpoint", "pipeline"):
            raise JobError(
                f"job.model: {job.model!r} ({entry.path}) is a {entry.identity.kind}, not a full checkpoint; "
                "pick a checkpoint from `ctrlgen models`"
            )
        return entry

    def _check_task_inputs(self, job: Job, images: ImageSource | None) -> None:
        """img2img/inpaint: the image reads, the mask reads at the image's size and selects
        something, the outpainted canvas stays within the size limit (step 2 of :meth:`check`)."""
        if job.task not in ("img2img", "inpaint"):
            if job.image is not None and job.image_offset is not None:
                check_placement(job, read_pixels(job.image, "job.image", images or load_image_file))
            return
        from ctrlgen.core.engine.masks import Expansion
        from ctrlgen.core.engine.regions import grown_mask, read_mask
        from ctrlgen.core.images import check_size

        source = read_pixels(job.image, "job.image", images or load_image_file)
        check_placement(job, source)
        if job.task != "inpaint":
            return
        height, width = source.shape[:2]
        mask = read_mask(job, source, images or load_image_file) if job.mask else None
        if job.outpaint is not None:
            out = job.outpaint
            canvas_w, canvas_h = Expansion(out.left, out.top, out.right, out.bottom).size(width, height)
            try:
                check_size(canvas_h, canvas_w, f"the outpainted canvas ({width}×{height} input expanded)")
            except ImageError as exc:
                raise JobError(f"job.outpaint: {exc}") from None
            return  # the new area is always repainted
        grown_mask(mask, job.inpaint.grow_px, job.inpaint.invert)  # raises when it selects nothing

    def _check_preprocess(self, job: Job, images: ImageSource | None) -> None:
        """A ``preprocess`` job: the mask and every unit's image read, the preprocessors exist
        and their params are valid, the mask fits each image."""
        mask = None
        if job.mask:
            try:
                mask = to_mask((images or load_image_file)(job.mask, "job.mask"), what="job.mask")
            except ImageError as exc:  # its message starts with "job.mask"
                raise JobError(str(exc)) from None
        for index, unit in enumerate(job.control):
            owner = f"control[{index}]"
            source = read_image(unit.image or job.image, f"{owner}.image", images)
            self._check_preprocessor(unit, owner)
            if unit.preprocessor.lower() != "none" and mask is not None and mask.shape != source.shape[:2]:
                raise JobError(f"job.mask is {mask.shape[1]}×{mask.shape[0]} but {owner}'s image is "
                               f"{source.shape[1]}×{source.shape[0]}; give a mask of the image's size")

    @staticmethod
    def _check_preprocessor(unit: Any, owner: str) -> Any:
        """The unit's registered preprocessor (None for ``none``), its params validated and its
        Python packages present; errors name ``control[i].preprocessor(_params)``."""
        from ctrlgen.core.engine.preprocess import check_requirements

        if unit.preprocessor.lower() == "none":
            if unit.preprocessor_params:
                raise JobError(f"{owner}.preprocessor_params: preprocessor 'none' takes no params; drop them "
                               "or name a preprocessor")
            return None
        try:
            spec = get_registry("preprocessors").get(unit.preprocessor)
        except CtrlgenError as exc:
            raise _at(f"{owner}.preprocessor", exc) from None
        validate_params(spec.params, unit.preprocessor_params, f"{owner}.preprocessor_params")
        try:
            check_requirements(spec)
        except CtrlgenError as exc:
            raise _at(f"{owner}.preprocessor", exc) from None
        return spec

    def check_units(self, job: Job, architecture: str, images: ImageSource | None = None) -> list[PreparedUnit]:
        """The ControlNet units, checked without computing maps: the adapter's params, the
        model (found, readable, a ControlNet for ``architecture``), the preprocessor and its
        params, the image, and the ControlNet adapter's own rules (its ``check``)."""
        adapter = get_registry("adapters").get("controlnet")
        units: list[PreparedUnit] = []
        for index, unit in enumerate(job.control):
            owner = f"control[{index}]"
            params = validate_params(adapter.params, unit.adapter_params(), owner)
            try:
                entry = self.store.find(unit.model, category=("controlnet",))
            except CtrlgenError as exc:
                raise _at(f"{owner}.model", exc) from None
            problem = entry.identity.details.get("error")
            if problem:
                raise JobError(f"{owner}.model {unit.model!r} cannot be used: {problem}")
            if entry.identity.kind != "controlnet":
                raise JobError(f"{owner}.model {unit.model!r} ({entry.path}) is a {entry.identity.kind}, not a ControlNet")
            if entry.identity.architecture not in (architecture, "unknown"):
                raise JobError(
                    f"{owner}.model {unit.model!r} is a {entry.identity.architecture} ControlNet but the "
                    f"checkpoint is {architecture}; use a ControlNet made for {architecture}"
                )
            spec = self._check_preprocessor(unit, owner)
            if spec is None or not spec.hint_from_job:  # an inpaint hint is built from the job's image
                read_pixels(unit.image or job.image, f"{owner}.image", images or load_image_file)
            units.append(PreparedUnit(index, entry, None, params, unit.preprocessor, dict(unit.preprocessor_params)))
        if units and adapter.check is not None:
            adapter.check(self._check_context(job, architecture, images), units)
        return units

    def prepare_units(self, job: Job, architecture: str, images: ImageSource | None = None) -> list[PreparedUnit]:
        """:meth:`check_units`, then each unit's control map (preprocessors run; no model loads)."""
        return self._control_maps(job, self.check_units(job, architecture, images), images)

    def _control_maps(self, job: Job, units: list[PreparedUnit], images: ImageSource | None,
                      cancellation: Any = None, frame: Any = None) -> list[PreparedUnit]:
        """Compute the control map of each checked unit (in place; returns ``units``).

        With an inpaint ``frame`` (``tasks.InpaintFrame``), units that read the job's image take
        its RGB pixels from the frame (converted once): in only-masked mode only the region's,
        so their preprocessors run on the region (as sd-webui-controlnet crops the control image
        to the only-masked region before preprocessing), not on the whole canvas."""
        from ctrlgen.core.engine.preprocess import preprocess

        for prepared in units:
            if cancellation is not None:
                cancellation.check("while preprocessing")
            unit = job.control[prepared.index]
            from_frame = frame is not None and unit.image is None and frame.regional
            if from_frame:
                prepared.in_region = frame.cropped
                source = frame.region_canvas() if frame.cropped else frame.canvas
            else:
                source = read_image(unit.image or job.image, f"control[{prepared.index}].image", images)
            pre_params = dict(unit.preprocessor_params)
            spec = None if unit.preprocessor.lower() == "none" else get_registry("preprocessors").get(unit.preprocessor)
            if spec is None or spec.hint_from_job:
                # ControlNet inpaint: the adapter builds the hint from the task's image and mask
                control = to_rgb(source)
            else:
                if unit.pixel_perfect and any(p.name == "detect_resolution" for p in spec.params):
                    pre_params["detect_resolution"] = pixel_perfect_resolution(
                        (source.shape[1], source.shape[0]), (job.width, job.height), unit.resize_mode
                    )
                control = preprocess(unit.preprocessor, source, **pre_params).image
            prepared.control_image = control
            prepared.preprocessor_params = pre_params
        return units

    def _check_context(self, job: Job, architecture: str, images: ImageSource | None) -> GenerationContext:
        """What an adapter's ``check`` sees: a :class:`GenerationContext` without a pipeline."""
        width, height = round_size(job.width, job.height)
        return GenerationContext(job, self, None, architecture, {}, width, height, prompt=job.prompt,
                                 negative_prompt=job.negative_prompt, image_source=images)

    def _preprocess(self, job: Job, job_id: str, emit, cancel, images: ImageSource | None) -> JobResult:
        """A ``preprocess`` job: each control unit's map (no model loads but the annotators')."""
        from PIL import Image

        from ctrlgen.core.engine.preprocess import preprocess
        from ctrlgen.core.images import to_mask

        mask = None
        if job.mask:
            try:
                mask = to_mask((images or load_image_file)(job.mask, "job.mask"), what="job.mask")
            except ImageError as exc:
                raise JobError(str(exc)) from None
        maps, data, infotexts = [], [], []
        for index, unit in enumerate(job.control):
            if cancel is not None and cancel.is_set():
                raise CancelledError(f"job {job_id} was cancelled")
            owner = f"control[{index}]"
            source = read_image(unit.image or job.image, f"{owner}.image", images)
            params = dict(unit.preprocessor_params)
            if unit.preprocessor.lower() == "none":
                result_image, result_data = source, None
            else:
                spec = get_registry("preprocessors").get(unit.preprocessor)
                if unit.pixel_perfect and any(p.name == "detect_resolution" for p in spec.params):
                    params["detect_resolution"] = pixel_perfect_resolution(
                        (source.shape[1], source.shape[0]), (job.width, job.height), unit.resize_mode)
                if mask is not None and mask.shape != source.shape[:2]:
                    raise JobError(f"job.mask is {mask.shape[1]}×{mask.shape[0]} but {owner}'s image is "
                                   f"{source.shape[1]}×{source.shape[0]}; give a mask of the image's size")
                result = preprocess(unit.preprocessor, source, mask, **params)
                result_image, result_data = result.image, result.data
            maps.append(result_image)
            data.append(result_data)
            infotexts.append(f"preprocessor: {unit.preprocessor}, params: {json.dumps(params, sort_keys=True)}")
            emit("progress", step=index + 1, total=len(job.control))
        return JobResult(job=job, job_id=job_id, images=[Image.fromarray(m) for m in maps],
                         seeds=[job.seed] * len(maps), control_maps=maps, infotexts=infotexts, data=data,
                         offset=job_offset(job))

    def _check_resources(self, spec: Any, params: dict[str, Any], owner: str, images: ImageSource | None) -> None:
        """Before any model loads: the models and images an adapter use names must exist."""
        for param in spec.params:
            value = params.get(param.name)
            if value is None or value == "" or value == "auto":
                continue
            if param.type == "model":
                try:
                    entry = self.store.find(value, category=param.category or None)
                except CtrlgenError as exc:  # same type (ModelNotFoundError, ...), message names the use
                    raise _at(f"{owner}.{param.name}", exc) from None
                problem = entry.identity.details.get("error")
                if problem:
                    raise JobError(f"{owner}.{param.name} {value!r} cannot be used: {problem}")
                if param.category and entry.source == "path" and entry.identity.kind != "unknown" and \
                        entry.category != param.category.lower():
                    raise JobError(f"{owner}.{param.name} {value!r} ({entry.path}) is a {entry.identity.kind}, "
                                   f"not a {param.category} model")
            elif param.type == "image" or (param.type == "json" and param.name.endswith("images")):
                refs = value if isinstance(value, list) else [value]
                for ref in refs:
                    if not isinstance(ref, str):
                        continue
                    if images is not None:
                        images(ref, f"{owner}.{param.name}")  # raises for an unknown reference
                    elif not Path(ref).is_file():
                        raise JobError(f"{owner}.{param.name}: file {ref} does not exist")

    def prepare_adapters(self, job: Job, architecture: str,
                         images: ImageSource | None = None) -> list[tuple[Any, list[dict[str, Any]]]]:
        """Validate ``job.adapters`` against each adapter's schema; grouped per adapter in the
        order they first appear (an adapter gets all its uses in one ``attach`` call)."""
        registry = get_registry("adapters")
        groups: dict[str, tuple[Any, list[dict[str, Any]]]] = {}
        for index, use in enumerate(job.adapters):
            owner = f"adapters[{index}]"
            if use.type.strip().lower() == "controlnet":
                raise JobError(f"{owner}: ControlNet units go in the job's `control` list, not in `adapters`")
            try:
                spec = registry.get(use.type)
            except CtrlgenError as exc:
                raise _at(f"{owner}.type", exc) from None
            if architecture not in spec.architectures:
                raise JobError(
                    f"{owner}: adapter {spec.name!r} supports {', '.join(spec.architectures)}, "
                    f"not this {architecture} checkpoint"
                )
            params = validate_params(spec.params, use.params(), f"{owner} ({spec.name})")
            self._check_resources(spec, params, f"{owner} ({spec.name})", images)
            groups.setdefault(spec.name, (spec, []))[1].append(params)
        always = [(spec, []) for spec in registry
                  if spec.always and spec.name not in groups and architecture in spec.architectures]
        prepared = always + list(groups.values())
        context = None
        for spec, uses in prepared:
            if spec.check is not None:
                context = context or self._check_context(job, architecture, images)
                spec.check(context, uses)
        return prepared

    # -- running ------------------------------------------------------------------
    def run(
        self,
        job: Job,
        *,
        on_event: Callable[[JobEvent], None] | None = None,
        cancel: threading.Event | None = None,
        job_id: str | None = None,
        images: ImageSource | None = None,
        preview: bool | int = False,
    ) -> JobResult:
        """Run ``job`` to completion; raises :class:`CancelledError` if ``cancel`` is set.

        ``images`` resolves the job's image references (default: they are file paths).
        ``preview`` (``True`` or every N steps) adds ``preview`` events carrying a small RGB
        image of the first latent, made without the VAE (:mod:`ctrlgen.core.engine.preview`)."""
        job_id = job_id or uuid.uuid4().hex

        def emit(kind: str, **data: Any) -> None:
            event = JobEvent(job_id, kind, data)  # type: ignore[arg-type]
            if on_event is not None:
                on_event(event)
            emit_event(event)

        try:
            with self._lock:
                if self.threads:  # per thread for OpenMP: set it where the job runs
                    from ctrlgen.core.threads import apply_threads

                    apply_threads(self.threads)
                result = self._run(job, job_id, emit, cancel, images, int(preview))
        except CancelledError as exc:
            # The traceback's frames hold the job's pipeline view, latents and control
            # tensors; drop them so the memory is free when this returns.
            exc = exc.with_traceback(None)
            self._release()
            emit("cancelled")
            raise exc from None
        except CtrlgenError as exc:
            self._release()
            emit("error", code=type(exc).__name__, message=str(exc))
            raise
        except Exception as exc:  # a library failure: report it as a job error, keep the type
            self._release()
            emit("error", code="internal_error", message=f"{type(exc).__name__}: {exc}")
            raise
        emit("finished", seeds=result.seeds)
        return result

    def _release(self) -> None:
        """After a cancelled or failed job: collect what it held and return cached GPU blocks."""
        import gc

        gc.collect()
        if self._device is not None and self._device.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def _run(self, job: Job, job_id: str, emit, cancel, images: ImageSource | None, preview_every: int) -> JobResult:
        """One job, in the order a diffusers ``__call__`` reads: everything that can be checked
        without weights is checked before anything loads."""
        from ctrlgen.core.engine.cancel import Cancellation

        emit("started")
        # 1. Check everything that needs no weights (models, params, images, fix passes:
        #    Engine.check).
        checked = self.check(job, images)
        if job.task == "preprocess":
            with Cancellation(cancel, job_id).armed():
                return self._preprocess(job, job_id, emit, cancel, images)
        from ctrlgen.core.engine import detail

        if job.task == "fix":  # only the passes, on job.image (steps 2-8 run per detection)
            image, seed, data = detail.fix_image(self, job, job_id, emit, cancel, images or load_image_file,
                                                 preview_every)
            sized = job.model_copy(update={"width": image.width, "height": image.height})
            text = infotext(sized, seed, Path(checked.checkpoint.path).stem) + f", Fix passes: {len(job.detail)}"
            return JobResult(job=job, job_id=job_id, images=[image], seeds=[seed], data=[data], infotexts=[text],
                             changed_box=data.pop("changed_box", None), offset=job_offset(job))
        if job.task == "upscale" or job.hires is not None:  # the upscale task, hires fix: core/engine/upscale.py
            from ctrlgen.core.engine import upscale

            result = upscale.run(self, job, checked, job_id, emit, cancel, images or load_image_file, preview_every,
                                 JobResult)
        else:
            result = self._generate(job, checked, job_id, emit, cancel, images, preview_every)
        # 9. Fix passes (job.detail) on each result, each detection an inpaint job of its own
        #    through steps 2-8 (core/engine/detail.py).
        if job.detail:
            result = detail.fix_result(self, result, emit, cancel, images or load_image_file, preview_every)
        return result

    def _generate(self, job: Job, checked: CheckedJob, job_id: str, emit, cancel, images: ImageSource | None,
                  preview_every: int, customize: Callable[[GenerationContext, Any], Any] | None = None,
                  region_only: bool = False, work_size: int | None = None) -> JobResult:
        """Steps 2-8 of :meth:`_run` for a checked generation job. ``customize(context, task_inputs)``,
        where given, returns a context manager entered after the adapters (the fix passes' soft
        inpainting and colour matching). ``region_only``: an inpaint job on a region frame gives
        only the composited region, at ``result.offset`` (the fix passes paste it themselves).
        ``work_size``: the side of the tiles a tiled refine works on (the memory plan sizes for a
        tile, not the canvas: the UNet and the VAE only ever see one tile at a time)."""
        from ctrlgen.core.engine.cancel import Cancellation

        # Cancelling works in every phase: between steps through the pipeline's interrupt flag,
        # elsewhere (preprocessors, encoders, the VAE decode) at the next torch module call.
        cancellation = Cancellation(cancel, job_id)
        import torch

        from ctrlgen.core.engine import tasks

        entry, architecture = checked.checkpoint, checked.architecture
        arch = tasks.architecture_spec(architecture)
        pipeline_class, adapters = arch.pipeline_class(job.task), checked.adapters
        width, height = round_size(job.width, job.height)
        with cancellation.armed():
            # An inpaint job's frame first: units that read the job's image preprocess its region.
            frame = None
            if job.task == "inpaint":
                load = images or load_image_file
                frame = tasks.inpaint_frame(job, load(job.image, "job.image"), load, aspect=width / height)
            units = self._control_maps(job, checked.units, images, cancellation, frame)

        # 2. Load the pipeline (cached across jobs) and take this job's view of it, with the
        #    job's sampler; the cached pipeline itself is never changed.
        from ctrlgen.core.engine.samplers import make_scheduler

        base = self.load_pipeline(entry)
        cancellation.check("while its model loaded")
        scheduler = (make_scheduler(job.sampler, base.scheduler.config) if arch.a1111_samplers
                     else type(base.scheduler).from_config(base.scheduler.config))
        pipeline = tasks.pipeline_view(pipeline_class, base, scheduler=scheduler)

        # 3. Prepare the inputs: size, seeds, the task's image and mask (grown, feathered,
        #    cropped for only-masked, the outpainted canvas) and the pipeline call's arguments.
        seed = job.seed if job.seed >= 0 else secrets.randbelow(2**32)
        seeds = [(seed + i) % 2**32 for i in range(job.batch_size)]
        generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
        task_inputs = tasks.prepare(job, width, height, images or load_image_file, _denoiser(base).config.in_channels,
                                    frame=frame)
        call_kwargs: dict[str, Any] = dict(
            **task_inputs.call_kwargs,
            num_inference_steps=job.steps,
            guidance_scale=job.cfg_scale,
            width=width,
            height=height,
            num_images_per_prompt=1,
            generator=generators,
            output_type="np",
        )
        context = GenerationContext(job, self, pipeline, architecture, call_kwargs, width, height,
                                    prompt=job.prompt, negative_prompt=job.negative_prompt,
                                    image_source=images, inpaint_frame=task_inputs.frame)

        # 4. The step callback: prompt-editing stages, the adapters' per-step work, progress,
        #    previews and cancelling (the pipeline's interrupt flag).
        total = task_inputs.steps
        prompt_plan = None  # set in step 6
        current_stage = [0]

        def on_step_end(pipe, step, timestep, tensors):
            # Prompt editing: the step that follows (1-based step + 2) may use another stage.
            stage = prompt_plan.stage_for_step(step + 2) if prompt_plan is not None else 0
            if stage != current_stage[0]:
                current_stage[0] = stage
                tensors.update(_stage_tensors(pipe, prompt_plan, stage))
            for callback in context.step_callbacks:
                tensors.update(callback(pipe, step, timestep, tensors) or {})
            emit("progress", step=step + 1, total=total)
            if preview_every and arch.latent_rgb and ((step + 1) % preview_every == 0 or step + 1 == total):
                from ctrlgen.core.engine.preview import latents_to_rgb

                emit("preview", step=step + 1, total=total, image=latents_to_rgb(tensors["latents"], arch.latent_rgb))
            if cancel is not None and cancel.is_set():
                pipe._interrupt = True  # the loop stops; the armed hook stops the decode after it
                cancellation.arm()
            elif step + 1 == total:
                cancellation.arm()  # what follows the loop (VAE decode, tiled or not) can be cancelled
            return tensors

        with contextlib.ExitStack() as stack:
            stack.callback(cancellation.disarm)
            # 5. Attach the adapters (ControlNet units first, then the others, then inpaint's
            #    latent fill); each restores what it changed when the stack closes, whatever happens.
            if units:
                adapter = get_registry("adapters").get("controlnet")
                stack.enter_context(adapter.attach(context, units))
            for spec, uses in adapters:
                stack.enter_context(spec.attach(context, uses))
            if task_inputs.attach is not None:  # inpaint's latent fill, on the pipeline that will run
                stack.enter_context(task_inputs.attach(context.pipeline))
            if customize is not None:
                stack.enter_context(customize(context, task_inputs))
            if cancel is not None and cancel.is_set():
                raise CancelledError(f"job {job_id} was cancelled before it started")

            # 6. Fit the memory (offload, VAE tiling/slicing for this size, undone after) and
            #    encode the prompts. Encoding comes after the adapters: LoRAs change the text
            #    encoder, textual inversions add tokens, and adapters may rewrite the prompt.
            from ctrlgen.core.engine.memory import applied

            images_run = job.batch_size * max(1, len(context.frames))  # LayerDiffuse's layers share the batch
            plan_w, plan_h = (min(width, work_size), min(height, work_size)) if work_size else (width, height)
            memory_plan = self.memory_plan(context.pipeline, architecture, plan_w, plan_h, images_run,
                                           resident=str(Path(entry.path).resolve()) not in self._offloaded
                                           and self.device.device != "cpu")
            stack.enter_context(applied(context.pipeline, memory_plan, self.device.device))
            if arch.prompt_weighting:
                from ctrlgen.core.engine import composition  # AND, part weights, regions (else plan_prompts)

                prompt_plan = composition.plan(context.pipeline, context.prompt, context.negative_prompt, total,
                                               job.batch_size, job.clip_skip, context.regions)
                stack.enter_context(composition.guided(context, prompt_plan))
                context.call_kwargs.update(prompt_plan.call_kwargs(0))
                pooled = "pooled_prompt_embeds" in context.call_kwargs
                inputs = ["latents", "prompt_embeds"] + (["add_text_embeds"] if pooled else [])
            else:  # the pipeline encodes the text itself (T5-based models and the like)
                context.call_kwargs.update(prompt=[context.prompt] * job.batch_size,
                                           negative_prompt=[context.negative_prompt] * job.batch_size)
                inputs = ["latents"]

            # 7. Denoise.
            output = context.pipeline(**context.call_kwargs, callback_on_step_end=on_step_end,
                                      callback_on_step_end_tensor_inputs=inputs)
        if cancel is not None and cancel.is_set():
            raise CancelledError(f"job {job_id} was cancelled")

        # 8. Composite and report: each image back into the job's picture (only-masked crops
        #    pasted under the feathered mask), with the control maps and A1111 infotexts.
        frame, offset, changed = task_inputs.frame, job_offset(job), None
        if frame is not None:
            changed = frame.changed_box.box
        if region_only and task_inputs.finish_region is not None:
            finish, region = task_inputs.finish_region, frame.region
            offset, changed = (offset[0] + region.x0, offset[1] + region.y0), frame.changed_box.relative_to(region).box
        else:
            finish = task_inputs.finish
        results = [finish(_to_pil(array, width, height)) for array in output.images]
        model_name = Path(entry.path).stem
        texts, labels = [infotext(job, s, model_name) for s in seeds], []
        if context.frames:  # several images per seed: which is which (opaque frames as RGB)
            frames = context.frames * len(seeds)
            results = [image.convert("RGB") if image.mode == "RGBA" and not alpha else image
                       for image, (_, alpha) in zip(results, frames, strict=True)]
            labels = [label for label, _ in frames]
            texts = [f"{text}, Layer: {label}" for text in texts for label, _ in context.frames]
            seeds = [s for s in seeds for _ in context.frames]
        return JobResult(
            job=job,
            job_id=job_id,
            images=results,
            seeds=seeds,
            labels=labels,
            control_maps=[unit.control_image for unit in units] + list(context.control_maps),
            infotexts=texts,
            memory=memory_plan,
            changed_box=changed,
            offset=offset,
        )


def file_signature(path: Any) -> tuple[str, int, int]:
    """A weights file's identity for caches: its resolved path, mtime (ns) and size."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return (str(resolved), stat.st_mtime_ns, stat.st_size)


def _stage_tensors(pipe: Any, plan: Any, stage: int) -> dict[str, Any]:
    """The denoising loop's conditioning tensors for prompt-editing ``stage`` (step 4's callback)."""
    import torch

    kwargs = plan.call_kwargs(stage)
    guided = pipe.do_classifier_free_guidance
    embeds = kwargs["prompt_embeds"]
    update = {"prompt_embeds": torch.cat([kwargs["negative_prompt_embeds"], embeds]) if guided else embeds}
    if "pooled_prompt_embeds" in kwargs:
        pooled = kwargs["pooled_prompt_embeds"]
        negative = kwargs["negative_pooled_prompt_embeds"]
        update["add_text_embeds"] = torch.cat([negative, pooled]) if guided else pooled
    return update


def _to_pil(array: np.ndarray, width: int, height: int):
    """A pipeline output at the generation size (step 8)."""
    from PIL import Image

    image = Image.fromarray((np.clip(array, 0, 1) * 255 + 0.5).astype(np.uint8))
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return image


def _denoiser(pipeline: Any) -> Any:
    """The pipeline's denoising network: a UNet (SD/SDXL) or a transformer (SD3, FLUX, ...)."""
    unet = getattr(pipeline, "unet", None)
    return unet if unet is not None else pipeline.transformer


def read_image(path: str | None, what: str, images: ImageSource | None = None) -> np.ndarray:
    """The RGB pixels of an image reference: a file path, or whatever ``images`` resolves."""
    if path is None:
        raise JobError(f"{what} is missing; give an image path")
    try:
        return to_rgb((images or load_image_file)(path, what), what)
    except ImageError as exc:
        raise JobError(f"{what}: {exc}") from None


def load_image_file(path: str, what: str) -> np.ndarray:
    """An image file's pixels as uint8: grey, RGB or RGBA as stored (16-bit scaled down)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("L", "RGB", "RGBA"):
                return np.asarray(image)
            if image.mode in ("LA", "PA") or "transparency" in image.info or image.mode == "P":
                return np.asarray(image.convert("RGBA"))
            if image.mode in ("I;16", "I;16B", "I", "F"):
                return to_rgb(image, what)
            return np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise JobError(f"{what}: file {path} does not exist") from None
    except UnidentifiedImageError:
        raise JobError(f"{what}: {path} is not an image PIL can read (PNG, JPEG, WebP, TIFF, ...)") from None
    except ImageError as exc:
        raise JobError(f"{what}: {exc}") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # a folder, a bad name, a huge image
        reason = getattr(exc, "strerror", None) or str(exc)
        raise JobError(f"{what}: cannot read {path!r} as an image: {reason}; give an image file") from None


def fit_control(units: list[PreparedUnit], width: int, height: int, resize_modes: list[str]):
    """Control maps as PIL images at the generation size, per unit resize mode."""
    from PIL import Image

    return [Image.fromarray(fit(u.control_image, width, height, mode)) for u, mode in zip(units, resize_modes, strict=False)]
