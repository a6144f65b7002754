"""Typed, frozen descriptions that plugins yield from their hooks.

A plugin never calls a "register" function: its hook returns or yields these specs,
and ctrlgen builds one :class:`~ctrlgen.core.plugins.registry.Registry` per kind from them.
Parameters are declared as data (:class:`Param`) so hosts can build widgets from them
and the server can validate a request before anything touches a GPU.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ctrlgen.core.errors import ParamError

ParamType = Literal["int", "float", "bool", "str", "choice", "image", "model", "json"]
_PARAM_TYPES = ("int", "float", "bool", "str", "choice", "image", "model", "json")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_+.]*$")


def normalize_name(name: str) -> str:
    """Registry key for a human-written name: ``"Depth Anything-V2"`` -> ``"depth_anything_v2"``."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a plugin-provided name must be a non-empty string, got {name!r}")
    key = re.sub(r"[\s\-]+", "_", name.strip().lower())
    if not _NAME_RE.match(key):
        raise ValueError(
            f"name {name!r} normalises to {key!r}, which has characters other than "
            "letters, digits, '_', '+' and '.'; rename it"
        )
    return key


@dataclass(frozen=True)
class Param:
    """One user-settable parameter, described as data.

    ``type`` is one of ``int``, ``float``, ``bool``, ``str``, ``choice`` (requires
    ``choices``), ``image`` (an image path or uploaded image id), ``model`` (a model-store
    reference; ``category`` says which kind, e.g. ``ipadapter``) or ``json`` (any JSON
    value: lists of points, boxes, per-block scales). ``min``/``max`` bound numbers;
    ``step`` is a UI hint. ``validator`` (optional) checks a ``json`` value further and
    raises ``ValueError`` with a message naming what is wrong.

    A param whose ``default`` is None is optional: not giving it passes None to the plugin.
    ``required=True`` makes it mandatory instead (e.g. an IP-Adapter's reference image).
    """

    name: str
    type: ParamType
    default: Any = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    choices: tuple[Any, ...] = ()
    description: str = ""
    category: str = ""
    validator: Callable[[Any], Any] | None = field(default=None, compare=False, repr=False)
    required: bool = False

    def __post_init__(self) -> None:
        if self.type not in _PARAM_TYPES:
            raise ValueError(f"Param {self.name!r}: type {self.type!r} is not one of {_PARAM_TYPES}")
        if self.type == "choice" and not self.choices:
            raise ValueError(f"Param {self.name!r}: a 'choice' param needs choices")
        object.__setattr__(self, "choices", tuple(self.choices))
        if self.default is not None:
            # The default must itself be valid: catches typos in plugin declarations early.
            self.validate(self.default)

    def validate(self, value: Any, owner: str = "") -> Any:
        """Return ``value`` converted to this param's type, or raise :class:`ParamError`.

        Strings are accepted for numbers and booleans (they arrive that way from the CLI
        and query strings). ``owner`` prefixes the name in messages, e.g. ``canny``.
        """
        label = f"{owner}.{self.name}" if owner else self.name
        if value is None:
            if self.default is None and not self.required:
                return None
            raise ParamError(f"{label} is missing; give a value ({self._describe_range()})")
        if self.type == "bool":
            return _to_bool(value, label)
        if self.type in ("int", "float"):
            number = _to_number(value, self.type, label)
            if self.min is not None and number < self.min:
                raise ParamError(f"{label}={number!r} is below its minimum {_fmt(self.min)}")
            if self.max is not None and number > self.max:
                raise ParamError(f"{label}={number!r} is above its maximum {_fmt(self.max)}")
            return number
        if self.type == "choice":
            for choice in self.choices:
                if value == choice or (isinstance(value, str) and str(choice) == value):
                    return choice
            options = ", ".join(repr(c) for c in self.choices)
            raise ParamError(f"{label}={value!r} is not one of the choices: {options}")
        if self.type == "json":
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError):
                raise ParamError(f"{label}={value!r} is not a JSON value (lists, finite numbers, strings)") from None
            check_text(value, label)
            if self.validator is not None:
                try:
                    result = self.validator(value)
                except (TypeError, ValueError) as exc:
                    raise ParamError(f"{label}: {exc}") from None
                return value if result is None else result
            return value
        if not isinstance(value, str):
            raise ParamError(f"{label}={value!r} must be a string")
        check_text(value, label)
        if self.type in ("image", "model") and not value.strip():
            raise ParamError(f"{label} is empty; give {'an image' if self.type == 'image' else 'a model'} reference")
        return value

    def _describe_range(self) -> str:
        if self.type == "choice":
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.type in ("int", "float"):
            low = "-inf" if self.min is None else _fmt(self.min)
            high = "inf" if self.max is None else _fmt(self.max)
            return f"{self.type} in [{low}, {high}]"
        return self.type

    def to_json(self) -> dict[str, Any]:
        """The schema a host builds a widget from (JSON-serialisable)."""
        return {
            "name": self.name,
            "type": self.type,
            "default": self.default,
            "min": self.min,
            "max": self.max,
            "step": self.step,
            "choices": list(self.choices),
            "description": self.description,
            "category": self.category,
            "required": self.required,
        }


def check_text(value: Any, where: str) -> None:
    """Raise :class:`ParamError` naming the path if a string in ``value`` (nested in lists and
    dicts, keys too) is not valid Unicode text: a lone surrogate such as ``"\\ud800"``, which
    JSON can carry but no text encoder, file name or UTF-8 output can."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            bad = value[exc.start : exc.end]
            raise ParamError(
                f"{where} holds {bad!r} (at character {exc.start}), a lone UTF-16 surrogate that is not valid "
                "Unicode text; send the character itself, or both halves of its surrogate pair") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(key, where)
            check_text(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_text(item, f"{where}[{index}]")


def _fmt(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


def _to_bool(value: Any, label: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ParamError(f"{label}={value!r} is not a boolean; use true or false")


def _to_number(value: Any, kind: str, label: str) -> int | float:
    if isinstance(value, bool):
        raise ParamError(f"{label}={value!r} is a boolean; a {kind} is expected")
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text) if kind == "int" else float(text)
        except ValueError:
            raise ParamError(f"{label}={text!r} is not a valid {kind}") from None
    if kind == "int":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise ParamError(f"{label}={value!r} must be a whole number")
        return value
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ParamError(f"{label}={value!r} must be a finite number")
    return float(value)


def validate_params(
    params: Iterable[Param], values: Mapping[str, Any], owner: str
) -> dict[str, Any]:
    """Validate ``values`` against ``params``: fill defaults, reject unknown names."""
    declared = {p.name: p for p in params}
    unknown = sorted(set(values) - set(declared))
    if unknown:
        known = ", ".join(sorted(declared)) or "none"
        raise ParamError(f"{owner} has no parameter {', '.join(map(repr, unknown))}; its parameters are: {known}")
    result: dict[str, Any] = {}
    for name, param in declared.items():
        result[name] = param.validate(values.get(name, param.default), owner)
    return result


@dataclass(frozen=True)
class WeightFile:
    """A weight file a preprocessor or adapter needs, found through the model store.

    ``filename`` is the conventional name (e.g. ``ControlNetHED.pth`` from
    lllyasviel/Annotators); ``folders`` are the model-store categories searched;
    ``source`` tells the user where to get it (a hub repo id or URL).
    """

    filename: str
    folders: tuple[str, ...] = ("annotators",)
    source: str = ""
    alternatives: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"filename": self.filename, "folders": list(self.folders), "source": self.source,
                "alternatives": list(self.alternatives)}


@dataclass(frozen=True)
class PreprocessResult:
    """A control map (``uint8`` H×W×3 at the input's size) plus optional structured data."""

    image: Any
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PreprocessorSpec:
    """A preprocessor: image (+ optional mask) and params in, control map out.

    ``run(image, mask=None, **params)`` receives an RGB ``uint8`` H×W×3 array and
    validated params and returns a :class:`PreprocessResult` or a bare array.
    ``unload()`` frees cached weights. ``weights`` lists files it needs from the store;
    ``requires`` lists importable modules it needs (checked before running).
    ``hint_from_job`` marks a preprocessor whose map, in a ControlNet unit of a job, the
    adapter builds itself from the job's own image and mask (ControlNet inpaint): the engine
    then hands the adapter the unit's source image instead of running ``run``.
    """

    name: str
    run: Callable[..., Any]
    params: tuple[Param, ...] = ()
    description: str = ""
    family: str = ""
    weights: tuple[WeightFile, ...] = ()
    requires: tuple[str, ...] = ()
    unload: Callable[[], None] | None = None
    hint_from_job: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", normalize_name(self.name))
        object.__setattr__(self, "params", tuple(self.params))
        _check_param_names(self.name, self.params)

    @property
    def needs_weights(self) -> bool:
        """Whether it reads weight files from the model store (``weights`` lists them)."""
        return bool(self.weights)

    def to_json(self) -> dict[str, Any]:
        """What ``ctrlgen plugins --json`` prints: the Param schemas and the weight files."""
        return {"name": self.name, "description": self.description, "family": self.family,
                "params": [p.to_json() for p in self.params], "needs_weights": self.needs_weights,
                "weights": [w.to_json() for w in self.weights], "requires": list(self.requires)}


@dataclass(frozen=True)
class AdapterSpec:
    """An adapter: changes a diffusers pipeline for one job and restores it afterwards.

    ``attach(context, params)`` returns a context manager. On enter it modifies
    ``context.pipeline`` / ``context.call_kwargs``; on exit (success, error or cancel)
    it restores everything it changed so the cached pipeline is clean for the next job.

    ``check(context, params)`` (optional) receives the same arguments before any weights load
    — when the engine starts a job and when the server accepts one — with ``context.pipeline``
    None. It raises :class:`~ctrlgen.core.errors.JobError` (naming the field) for what can be
    known from the params, the model store (file headers) and the job's images, so such a job
    is refused at once instead of failing after the checkpoint has loaded.
    """

    name: str
    attach: Callable[..., Any]
    params: tuple[Param, ...] = ()
    description: str = ""
    architectures: tuple[str, ...] = ("sd15", "sdxl")
    requires: tuple[str, ...] = ()
    always: bool = False
    check: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", normalize_name(self.name))
        object.__setattr__(self, "params", tuple(self.params))
        _check_param_names(self.name, self.params)

    def to_json(self) -> dict[str, Any]:
        """What ``ctrlgen plugins --json`` prints. An adapter's weights are the models its
        ``model`` params name (their ``category`` is the model-store folder)."""
        return {"name": self.name, "description": self.description, "architectures": list(self.architectures),
                "params": [p.to_json() for p in self.params], "always": self.always,
                "requires": list(self.requires)}


@dataclass(frozen=True)
class HostBridgeSpec:
    """An installer for a host application's plugin (Krita, GIMP, ...).

    ``install(target_dir: Path | None) -> Path`` copies the host plugin and returns where
    it went; ``uninstall(target_dir)`` removes it.
    """

    name: str
    install: Callable[..., Path]
    uninstall: Callable[..., Any]
    description: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", normalize_name(self.name))


@dataclass(frozen=True)
class ModelRoot:
    """A folder to scan for models and the layout its sub-folders follow.

    ``layout`` is ``"auto"`` (detect A1111/ComfyUI/flat), ``"a1111"``, ``"comfyui"``,
    ``"hf-cache"`` or ``"flat"`` (files directly in the folder).
    """

    path: Path
    layout: str = "auto"


@dataclass(frozen=True)
class ModelSourceSpec:
    """Where weights are found: ``roots()`` returns the :class:`ModelRoot` folders to scan."""

    name: str
    roots: Callable[[], Iterable[ModelRoot]]
    description: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", normalize_name(self.name))


def _check_param_names(owner: str, params: tuple[Param, ...]) -> None:
    seen: set[str] = set()
    for param in params:
        if not isinstance(param, Param):
            raise TypeError(f"{owner}: params must be Param instances, got {param!r}")
        if param.name in seen:
            raise ValueError(f"{owner}: parameter {param.name!r} is declared twice")
        seen.add(param.name)


@dataclass(frozen=True)
class ArchitectureSpec:
    """A model family the engine can run (SD1.5, SDXL, ...; SD3 or FLUX from plugins).

    ``name`` is the architecture the model store identifies (``sd15``, ``sd2``, ``sdxl``,
    ``sd3``, ``flux``, or a plugin's own). ``pipelines`` maps ``(task, controlnet)`` —
    task ``txt2img``/``img2img``/``inpaint``, controlnet ``False``, ``True`` or ``"union"`` —
    to a diffusers pipeline class or its name in ``diffusers``; a missing pair means the
    architecture cannot do that. ``prompt_weighting``: prompts go through ctrlgen's A1111
    weighting and prompt-editing encoder (CLIP text encoders like SD/SDXL's); otherwise the
    pipeline gets the prompt text. ``latent_rgb`` gives cheap previews (a 3-column matrix
    with one row per latent channel, and 3 biases); without it no previews are sent.
    ``native_size`` is the side the model was trained at. ``a1111_samplers``: the job's
    sampler names (Euler a, DPM++ 2M Karras, ...) map onto this model's noise schedule;
    otherwise (flow-matching models) the model's own scheduler runs.
    """

    name: str
    pipelines: dict[tuple[str, bool | str], Any]
    description: str = ""
    prompt_weighting: bool = True
    a1111_samplers: bool = True
    latent_rgb: tuple[tuple[tuple[float, ...], ...], tuple[float, ...]] | None = None
    native_size: int = 512
    requires: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", normalize_name(self.name))
        object.__setattr__(self, "pipelines", dict(self.pipelines))
        for key in self.pipelines:
            if not (isinstance(key, tuple) and len(key) == 2 and key[0] in ("txt2img", "img2img", "inpaint")
                    and key[1] in (False, True, "union")):
                raise ValueError(
                    f"architecture {self.name!r}: pipelines key {key!r} must be (task, controlnet) with task "
                    "txt2img/img2img/inpaint and controlnet False/True/'union'"
                )
        if ("txt2img", False) not in self.pipelines:
            raise ValueError(f"architecture {self.name!r} needs a ('txt2img', False) pipeline")

    def pipeline_class(self, task: str, controlnet: bool | str = False):
        """The pipeline class for ``task`` with ``controlnet``; a clear error if there is none."""
        from ctrlgen.core.errors import JobError

        target = self.pipelines.get((task, controlnet))
        if target is None:
            kind = {False: "", True: " with ControlNet", "union": " with a union ControlNet"}[controlnet]
            can = ", ".join(sorted(f"{t}{'+' + str(c) if c else ''}" for t, c in self.pipelines))
            raise JobError(f"{self.name} models cannot do {task}{kind} here (can: {can})")
        if isinstance(target, str):
            import diffusers

            return getattr(diffusers, target)
        return target


@dataclass(frozen=True)
class Detection:
    """One thing a detector found in an image.

    ``box`` is ``(x0, y0, x1, y1)`` in the image's pixels (x1, y1 exclusive, floats allowed);
    ``confidence`` in ``[0, 1]``; ``label`` what it is (``face``, ``hand``, ``person`` or an open
    label). Where the detector has them: ``mask`` (``uint8`` H×W at the image's size, 255 =
    the thing), ``keypoints`` (``float32`` N×2 or N×3 in pixels; N×3 carries a depth-like third
    coordinate, e.g. mediapipe's hand landmarks) and ``data`` (anything else, JSON-able:
    handedness, landmark names, the model's class id).
    """

    box: tuple[float, float, float, float]
    confidence: float
    label: str
    mask: Any = None
    keypoints: Any = None
    data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)

    def to_json(self) -> dict[str, Any]:
        """The JSON form (no mask pixels: ``has_mask`` says whether there is one)."""
        keypoints = None if self.keypoints is None else [[float(v) for v in point] for point in self.keypoints]
        return {"box": [round(float(v), 2) for v in self.box], "confidence": round(float(self.confidence), 4),
                "label": self.label, "has_mask": self.mask is not None, "keypoints": keypoints,
                "data": dict(self.data)}


@dataclass(frozen=True)
class DetectorSpec:
    """A detector for the detailer (face/hand fixing): RGB image in, :class:`Detection` s out.

    ``run(image, **params)`` receives an RGB ``uint8`` H×W×3 array and validated params and
    returns a list of :class:`Detection` (any order; callers sort and filter). ``finds`` says
    what it finds (``face``, ``hand``, ``person``, or open labels such as a YOLO model's class
    names); ``weights`` the files it reads from the model store; ``requires`` the modules it
    imports; ``unload()`` frees what it loaded.
    """

    name: str
    run: Callable[..., Any]
    finds: tuple[str, ...]
    params: tuple[Param, ...] = ()
    description: str = ""
    weights: tuple[WeightFile, ...] = ()
    requires: tuple[str, ...] = ()
    unload: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", normalize_name(self.name))
        object.__setattr__(self, "params", tuple(self.params))
        object.__setattr__(self, "finds", tuple(self.finds))
        if not self.finds:
            raise ValueError(f"detector {self.name!r}: say what it finds (finds=('face',), ('hand',), ...)")
        _check_param_names(self.name, self.params)

    @property
    def needs_weights(self) -> bool:
        return bool(self.weights)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "finds": list(self.finds),
                "params": [p.to_json() for p in self.params], "needs_weights": self.needs_weights,
                "weights": [w.to_json() for w in self.weights], "requires": list(self.requires)}


SPEC_TYPES: dict[str, type] = {
    "preprocessors": PreprocessorSpec,
    "detectors": DetectorSpec,
    "adapters": AdapterSpec,
    "architectures": ArchitectureSpec,
    "host_bridges": HostBridgeSpec,
    "model_sources": ModelSourceSpec,
}
