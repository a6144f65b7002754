"""The plug-in's logic without GIMP: regions, masks, pixel formats, jobs, capabilities, messages.

Runs in GIMP's Python with the standard library only, and in the test suite without GIMP.
Pixels are ``bytes`` of ``uint8``, row-major: RGBA as GEGL's ``"R'G'B'A u8"`` gives them, masks
as ``"Y u8"`` (one byte per pixel, 255 = selected).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from .client_import import (
    MIN_SIDE,
    AuthError,
    Client,
    ClientError,
    JobFailed,
    Rect,
    ServerNotRunning,
    fit_region,
    generation_size,
)

LAYER_PREFIX = "[ctrlgen]"
SETTINGS_PARASITE = "ctrlgen-gimp-settings"  # global, persistent: the connection
CONTROL_DATA_PARASITE = "ctrlgen-control-data"  # on a control-map layer: the preprocessor's JSON (OpenPose keypoints)
# What Fix faces / Fix hands look for, and the detector tried first where the server has several.
FIX_TARGETS = {"faces": ("face", "mediapipe_face_full"), "hands": ("hand", "mediapipe_hands")}


class ImageRefused(Exception):
    """The image or the settings cannot be used as they are; the message says what to change."""


# -- regions (Rect, fit_region, generation_size: host_bridges/hostlogic.py, shared with Krita) --
def check_size(area: Rect, what: str = "The layer") -> None:
    if area.width < MIN_SIDE or area.height < MIN_SIDE:
        raise ImageRefused(f"{what} is {area.width}×{area.height} pixels; ctrlgen needs at least "
                           f"{MIN_SIDE}×{MIN_SIDE}. Enlarge it (Layer › Layer Boundary Size, Image › Canvas Size).")


def inpaint_region(selection: Rect, layer: Rect, context_px: int) -> Rect:
    """The part of the layer (image coordinates) an inpaint job works on: the selection's bounds
    inside the layer plus ``context_px`` of surroundings, at least 64×64 where the layer allows,
    clamped to the layer. Working on this crop keeps big images fast."""
    inside = selection.intersected(layer)
    if inside.empty:
        raise ImageRefused("The selection does not touch the active layer: select inside the layer, or select "
                           "None (Select › None) to generate for the whole layer.")
    region = fit_region(inside, layer, context_px)
    check_size(region, "The area around the selection")
    return region


# -- pixels -----------------------------------------------------------------------------------
def to_rgba(data: bytes | bytearray | memoryview, channels: int) -> bytes:
    """A server image (grey, RGB or RGBA) as RGBA, opaque where it had no alpha."""
    src = memoryview(data).cast("B")
    if channels == 4:
        return bytes(src)
    count = len(src) // channels
    out = bytearray(b"\xff" * (count * 4))
    if channels == 3:
        out[0::4], out[1::4], out[2::4] = src[0::3], src[1::3], src[2::3]
    elif channels == 1:
        out[0::4] = out[1::4] = out[2::4] = src
    else:
        raise ValueError(f"images have 1, 3 or 4 channels, not {channels}")
    return bytes(out)


def pixels_for_server(rgba: bytes) -> tuple[bytes, int]:
    """``(pixels, channels)`` to send: RGB when every pixel is opaque, else RGBA (the server then
    generates from the colours on white and keeps the alpha)."""
    alpha = rgba[3::4]
    if not alpha.strip(b"\xff"):
        out = bytearray(len(rgba) // 4 * 3)
        out[0::3], out[1::3], out[2::3] = rgba[0::4], rgba[1::4], rgba[2::4]
        return bytes(out), 3
    return bytes(rgba), 4


_SELECTED = bytes([0] + [255] * 255)  # translate table: any selection > 0 -> 255


def masked_result(rgba: bytes, mask: bytes) -> bytes:
    """The inpaint result layer: the server's pixels (it already blended them through the
    feathered selection), transparent wherever the selection is 0, so every pixel outside
    the selection shows the original exactly."""
    count = len(mask)
    if len(rgba) != count * 4:
        raise ValueError(f"the result has {len(rgba)} bytes for {count} mask pixels")
    gate = mask.translate(_SELECTED)
    alpha = (int.from_bytes(rgba[3::4], "big") & int.from_bytes(gate, "big")).to_bytes(count, "big")
    out = bytearray(rgba)
    out[3::4] = alpha
    return bytes(out)


# -- settings ---------------------------------------------------------------------------------
@dataclass
class Connection:
    """Where the server is. Empty url: the one ``ctrlgen serve`` wrote in ctrlgen's config
    folder (server.json); empty token: the token file there."""

    url: str = ""
    token: str = ""

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self)).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes | None) -> Connection:
        try:
            values = json.loads(bytes(data or b"{}").decode("utf-8"))
        except ValueError:
            values = {}
        return cls(url=str(values.get("url") or ""), token=str(values.get("token") or ""))

    def client(self, timeout: float = 120.0) -> Client:
        token = self.token.strip() or None
        if self.url.strip():
            client = Client(self.url.strip(), token=token, timeout=timeout)
            try:
                client.health()
            except BaseException:
                client.close()
                raise
            return client
        return Client.discover(token=token, timeout=timeout)


# -- capabilities -----------------------------------------------------------------------------
def checkpoints(capabilities: dict[str, Any]) -> list[str]:
    """The server's checkpoint names (what Generate, Inpaint and Fix run)."""
    names = []
    for model in capabilities.get("models", []):
        kind = str(model.get("kind") or "unknown").lower()
        category = str(model.get("category") or "").lower()
        if model.get("name") and (kind == "checkpoint" or (kind == "unknown" and category in ("checkpoints",
                                                                                                "diffusers"))):
            names.append(model["name"])
    return sorted(names)


def samplers(capabilities: dict[str, Any]) -> list[str]:
    return [str(name) for name in capabilities.get("samplers", [])]


def preprocessors(capabilities: dict[str, Any]) -> list[str]:
    return sorted(p["name"] for p in capabilities.get("preprocessors", []) if p.get("name"))


def preprocessor_schema(capabilities: dict[str, Any], name: str) -> list[dict[str, Any]]:
    for spec in capabilities.get("preprocessors", []):
        if spec.get("name") == name:
            return list(spec.get("params", []))
    raise ImageRefused(f"The server has no preprocessor {name!r}; pick one of "
                       f"{', '.join(preprocessors(capabilities)) or 'none'}.")


def detector_for(capabilities: dict[str, Any], target: str, chosen: str = "") -> str:
    """The detector Fix faces / Fix hands uses: ``chosen`` if the server has it, else the preferred one."""
    label, preferred = FIX_TARGETS[target]
    names = sorted((d["name"] for d in capabilities.get("detectors", [])
                    if d.get("name") and label in d.get("finds", [])), key=lambda name: (name != preferred, name))
    if chosen:
        if chosen not in names:
            raise ImageRefused(f"The server has no detector {chosen!r} for {target}; pick one of "
                               f"{', '.join(names) or 'none'}.")
        return chosen
    if not names:
        raise ImageRefused(f"The server has no detector for {target}: install mediapipe where `ctrlgen serve` runs "
                           "(`pip install ctrlgen[detectors]`) and restart it.")
    return names[0]


@dataclass(frozen=True)
class ParamField:
    """One widget of a Param schema: ``kind`` is ``int``, ``float``, ``bool``, ``choice`` or
    ``text`` (strings, and JSON for the rest)."""

    name: str
    kind: str
    default: Any
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple[Any, ...] = ()
    description: str = ""


def param_fields(schema: list[dict[str, Any]]) -> list[ParamField]:
    """The widgets a preprocessor's params need, in the schema's order (image params, which
    come from layers, are left out)."""
    fields = []
    for param in schema:
        kind = {"int": "int", "float": "float", "bool": "bool", "choice": "choice"}.get(param.get("type"), "text")
        if param.get("type") == "image":
            continue
        if kind in ("int", "float") and param.get("default") is None:
            kind = "text"  # optional: an empty entry leaves it out (a spin box always holds a number)
        fields.append(ParamField(param["name"], kind, param.get("default"), param.get("min"), param.get("max"),
                                 param.get("step"), tuple(param.get("choices") or ()), param.get("description", "")))
    return fields


def parse_params(text: str, schema: list[dict[str, Any]], owner: str) -> dict[str, Any]:
    """The params JSON object a procedure got (``""``: none), checked against the schema's
    names and number ranges; the server checks the rest."""
    if not text.strip():
        return {}
    try:
        params = json.loads(text)
    except ValueError as exc:
        raise ImageRefused(f"{owner} params are not JSON ({exc}); write them as {{\"name\": value}}.") from None
    if not isinstance(params, dict):
        raise ImageRefused(f"{owner} params must be a JSON object such as {{\"name\": value}}, not {text!r}.")
    known = {param["name"]: param for param in schema}
    for name, value in params.items():
        if name not in known:
            raise ImageRefused(f"{owner} has no param {name!r}; it has {', '.join(known) or 'none'}.")
        low, high = known[name].get("min"), known[name].get("max")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if (low is not None and value < low) or (high is not None and value > high):
                raise ImageRefused(f"{owner}.{name}={value} is outside {low}…{high}.")
    return params


# -- jobs -------------------------------------------------------------------------------------
@dataclass
class GenerateSettings:
    model: str = ""
    prompt: str = ""
    negative_prompt: str = ""
    seed: int = -1
    steps: int = 20
    cfg_scale: float = 7.0
    sampler: str = "Euler a"
    strength: float = 1.0  # 1: txt2img without a selection; below: img2img from the active layer
    # Generate at the model's size for the area's shape (generation_size) and fit the result to
    # the area; off: at the area's own size (small areas: fast, but few latents to draw in).
    model_size: bool = True


def _base_job(settings: GenerateSettings, task: str, width: int, height: int) -> dict[str, Any]:
    if not settings.model:
        raise ImageRefused("Choose a model: the dialog lists the server's checkpoints (`ctrlgen models`).")
    return {"model": settings.model, "task": task, "prompt": settings.prompt,
            "negative_prompt": settings.negative_prompt, "seed": int(settings.seed), "steps": int(settings.steps),
            "cfg_scale": float(settings.cfg_scale), "sampler": settings.sampler, "width": width, "height": height}


def _size(settings: GenerateSettings, area: Rect, architecture: str) -> tuple[int, int]:
    if settings.model_size:
        return generation_size(area.width, area.height, architecture)
    return area.width, area.height


def generate_job(settings: GenerateSettings, area: Rect, architecture: str) -> dict[str, Any]:
    """txt2img (strength 1) or img2img from the layer (below 1), at the model's size for the
    area's shape; the plug-in scales the result to the area."""
    width, height = _size(settings, area, architecture)
    if settings.strength >= 1.0:
        return _base_job(settings, "txt2img", width, height)
    job = _base_job(settings, "img2img", width, height)
    job["strength"] = max(0.01, float(settings.strength))
    return job


def inpaint_job(settings: GenerateSettings, region: Rect, architecture: str) -> dict[str, Any]:
    """An inpaint of the region under the (already feathered) selection. GIMP has feathered it,
    so the server neither grows nor feathers it again; it repaints where the mask is set, blends
    through its soft edge and answers at the region's size."""
    width, height = _size(settings, region, architecture)
    job = _base_job(settings, "inpaint", width, height)
    job["strength"] = min(1.0, max(0.01, float(settings.strength)))
    job["inpaint"] = {"grow_px": 0, "feather_px": 0, "fill": "fill" if settings.strength >= 1.0 else "original"}
    return job


def fix_job(settings: GenerateSettings, detector: str, denoise: float, guide_size: int = 512) -> dict[str, Any]:
    """A ``fix`` job (docs/fixing.md): each find of the detector repainted with its shorter side
    at ``guide_size`` (the longer at most twice that), nothing else; the prompt is the pass's."""
    if not 0.0 < denoise <= 1.0:
        raise ImageRefused(f"Fix strength is {denoise:.2f}; it must be above 0 and at most 1.")
    job = _base_job(settings, "fix", 512, 512)
    job.pop("width")
    job.pop("height")
    job["detail"] = [{"detector": detector, "denoise": float(denoise), "guide_size": int(guide_size),
                      "max_size": 2 * int(guide_size)}]
    return job


def layer_name(kind: str, prompt: str = "", seed: Any = None) -> str:
    words = " ".join(prompt.split())
    if len(words) > 40:
        words = words[:39].rstrip() + "…"
    seed_text = f" (seed {seed})" if seed not in (None, -1) else ""
    return f"{LAYER_PREFIX} {kind}{': ' + words if words else ''}{seed_text}"


# -- progress and messages --------------------------------------------------------------------
def progress_of(kind: str, data: dict[str, Any]) -> tuple[float | None, str | None]:
    """``(fraction or None, text or None)`` for the progress bar, from one job event."""
    if kind == "queued":
        ahead = int(data.get("position", 0) or 0)
        return None, f"ctrlgen: queued ({ahead} ahead)" if ahead else "ctrlgen: queued"
    if kind == "started":
        return 0.0, "ctrlgen: running"
    if kind == "progress" and data.get("total"):
        return int(data.get("step", 0)) / max(1, int(data["total"])), None
    if kind == "detail" and data.get("phase") == "step" and data.get("total"):
        return int(data.get("step", 0)) / max(1, int(data["total"])), (
            f"ctrlgen: fixing {int(data.get('detection', 0)) + 1} of {data.get('detections', '?')}")
    if kind == "detail" and data.get("phase") == "detected":
        return None, f"ctrlgen: found {data.get('found', 0)}, repainting {data.get('detections', 0)}"
    return None, None


def error_message(exc: BaseException, url: str = "") -> str:
    """What went wrong and what to do, for a GIMP message."""
    where = f" at {url}" if url else ""
    if isinstance(exc, ServerNotRunning):
        return (f"ctrlgen: the server is not running{where}. Start it in a terminal with `ctrlgen serve`, "
                "or set its address in Filters › ctrlgen › Settings.")
    if isinstance(exc, AuthError):
        return ("ctrlgen: the server refused the token. Clear the token in Filters › ctrlgen › Settings to use "
                "the one in ctrlgen's config folder (`ctrlgen config-dir`, file `token`), or paste that file's content.")
    if isinstance(exc, JobFailed):
        if exc.code == "cancelled":
            return "ctrlgen: cancelled; the image is unchanged."
        if exc.code == "out_of_memory":
            return f"ctrlgen: out of memory: {exc.message} Try a smaller selection or image."
        return f"ctrlgen: the job failed ({exc.code}): {exc.message}"
    if isinstance(exc, ClientError):
        if exc.code == "model_not_found":
            return f"ctrlgen: a model is missing: {exc.message} (`ctrlgen models` lists the server's models)."
        if exc.code == "queue_full":
            return "ctrlgen: the server's queue is full; wait for a job to finish and try again."
        return f"ctrlgen: the server answered {exc.code or exc.status}: {exc.message}"
    if isinstance(exc, ImageRefused):
        return f"ctrlgen: {exc}"
    return f"ctrlgen: unexpected error: {type(exc).__name__}: {exc}"
