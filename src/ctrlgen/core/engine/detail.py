"""Fix passes (ADetailer's habit, FaceDetailer's options): detect, select, mask and repaint.

A pass (:class:`~ctrlgen.core.engine.jobs.DetailPass`) runs a registered detector on the
picture, keeps and orders the detections, builds one mask per detection (or one merged mask)
and repaints each as an inpaint job of its own through the engine's steps 2-8: only-masked
crop at the model's resolution, the pass's overrides and ControlNet units, paste-back through
the feathered mask (pixels where it is 0 stay the input's, bit for bit). Two things make the
seams disappear, both on by default: soft inpainting (every step the latents are blended back
toward the original by the feathered mask) and colour matching (the repainted patch is shifted
to the colours around it). docs/fixing.md documents every option and the order they apply in.

The order of operations is ADetailer's: confidence → area ratio → top k → sort → select →
offset → dilate/erode → merge/invert → repaint (mask blur = the paste-back feather).

Seeds: detection ``d`` (0-based, in the final order) in cycle ``c`` of a pass repaints with
``(base + d + c × n) mod 2**32`` where ``n`` is the number of detections the pass repaints and
``base`` is the pass's ``seed`` when given (≥ 0), else the image's seed.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ctrlgen.core.engine.masks import Region, grow, masked_region
from ctrlgen.core.errors import CtrlgenError, JobError

IMAGE_REF = "ctrlgen-detail:image"
MASK_REF = "ctrlgen-detail:mask"
HAND_REF = "ctrlgen-detail:hand"  # the hand-structure unit's map over the picture
# hand_structure -> (the preprocessor that draws it, its template flag, default weight, default control mode)
HAND_MAPS = {"openpose": ("hand_openpose", False, 1.0, "balanced"),
             "depth": ("hand_depth", False, 1.0, "balanced"),
             "template": ("hand_depth", True, 1.5, "controlnet")}


# -- checking ---------------------------------------------------------------------------------


def check_passes(engine: Any, job: Any, images: Callable[[str, str], np.ndarray],
                 picture: np.ndarray | None = None) -> None:
    """Each of ``job.detail``: its detector exists and its params are valid, and the inpaint
    job it becomes (its overrides, ControlNet units) passes :meth:`Engine.check` on ``picture``
    (the image to fix; for a generation job, None: a stand-in of the job's size). Errors start
    with the field path (``detail[0].detector_params.confidence``)."""
    from ctrlgen.core.engine.detect import check_requirements
    from ctrlgen.core.plugins.specs import validate_params

    if not job.detail:
        return
    if picture is None:  # the generated picture does not exist yet
        picture = np.zeros((job.height, job.width, 3), np.uint8)
    probe_mask = np.zeros(picture.shape[:2], np.uint8)
    probe_mask[: min(64, max(1, picture.shape[0] // 2)), : min(64, max(1, picture.shape[1] // 2))] = 255
    for index, detail_pass in enumerate(job.detail):
        owner = f"detail[{index}]"
        spec = detector_spec(detail_pass.detector, owner)
        validate_params(spec.params, detail_pass.detector_params, f"{owner}.detector_params")
        try:
            check_requirements(spec)
        except CtrlgenError as exc:
            raise _under(owner, exc) from None
        if detail_pass.vae is not None:
            vae_entry(engine, detail_pass.vae, owner)
        sub = repaint_job(job, detail_pass, prompt=job.prompt, negative_prompt=job.negative_prompt, seed=0,
                          size=(64, 64), denoise=detail_pass.denoise, padding=detail_pass.padding_px)
        hand_probe = np.zeros(picture.shape[:2] + (3,), np.uint8) if detail_pass.hand_structure else None
        try:
            engine.check(sub, _source(picture, probe_mask, images, hand_probe))
        except CtrlgenError as exc:
            raise _under(owner, exc, _hand_unit(detail_pass)) from None


def _hand_unit(detail_pass: Any) -> int | None:
    """The index of the hand-structure unit in the pass's repaint job (None: it has none)."""
    return len(detail_pass.control) if detail_pass.hand_structure is not None else None


def vae_entry(engine: Any, name: str, owner: str) -> Any:
    """The store entry of a pass's ``vae`` (errors name ``{owner}.vae``)."""
    try:
        entry = engine.store.find(name, category=("vae",))
    except CtrlgenError as exc:
        exc.args = (f"{owner}.vae: {exc}",)
        raise exc.with_traceback(None) from None
    if entry.identity.kind != "vae":
        raise JobError(f"{owner}.vae: {name!r} ({entry.path}) is a {entry.identity.kind}, not a VAE; pick one from "
                       "`ctrlgen models`")
    return entry


def detector_spec(name: str, owner: str = "detail[0]") -> Any:
    """The registered detector ``name`` (errors name ``{owner}.detector``)."""
    from ctrlgen.core.plugins.manager import get_registry

    try:
        return get_registry("detectors").get(name)
    except CtrlgenError as exc:
        exc.args = (f"{owner}.detector: {exc}",)
        raise exc.with_traceback(None) from None


def _under(owner: str, exc: CtrlgenError, hand_unit: int | None = None) -> CtrlgenError:
    """An error about the repaint job, its field paths moved under the pass (``job.model`` →
    ``detail[0].model``, ``control[1]`` → ``detail[0].control[1]``; the hand-structure unit,
    ``control[hand_unit]``, → ``detail[0].hand_model``, ``.hand_weight``, ...)."""
    text = str(exc)
    if hand_unit is not None:
        unit = rf"(?<![\w.\]])control\[{hand_unit}\]"
        for field_name in ("model", "weight", "control_mode"):
            text = re.sub(rf"{unit}\.{field_name}\b", f"{owner}.hand_{field_name}", text)
        text = re.sub(unit, f"{owner}.hand_structure", text)
    text = re.sub(r"\bjob\.", f"{owner}.", text)
    text = re.sub(r"(?<![\w.\]])control\[", f"{owner}.control[", text)
    if not text.startswith(owner):
        text = f"{owner}: {text}"
    exc.args = (text,)
    return exc.with_traceback(None)


# -- detection, selection, masks ----------------------------------------------------------------


def detect(detail_pass: Any, image: np.ndarray, owner: str = "detail[0]") -> list[Any]:
    """Run the pass's detector on RGB ``image``; detections at or above its confidence."""
    from ctrlgen.core.engine.detect import normalize_detections
    from ctrlgen.core.plugins.specs import validate_params

    spec = detector_spec(detail_pass.detector, owner)
    params = validate_params(spec.params, detail_pass.detector_params, f"{owner}.detector_params")
    height, width = image.shape[:2]
    found = normalize_detections(spec.run(np.ascontiguousarray(image), **params), width, height, spec.name)
    return [d for d in found if d.confidence >= detail_pass.confidence]


def select(detections: list[Any], detail_pass: Any, size: tuple[int, int]) -> list[Any]:
    """Area ratio → top k → sort → select, as docs/fixing.md lists them. ``size`` is the
    image's ``(width, height)``."""
    width, height = size
    image_area = float(width * height)
    kept = [d for d in detections
            if detail_pass.min_area_ratio <= d.area / image_area <= detail_pass.max_area_ratio]
    if detail_pass.top_k:
        key = (lambda d: d.area) if detail_pass.top_k_by == "area" else (lambda d: d.confidence)
        kept = sorted(kept, key=key, reverse=True)[: detail_pass.top_k]
        kept = [d for d in detections if any(d is k for k in kept)]  # back in the detector's order
    kept = sort_detections(kept, detail_pass.sort_by, size)
    if detail_pass.select is None:
        return kept
    if detail_pass.select_by == "order":
        ranked = kept
    elif detail_pass.select_by == "size":
        ranked = sorted(kept, key=lambda d: d.area, reverse=True)
    else:
        ranked = sorted(kept, key=lambda d: d.confidence, reverse=True)
    chosen = [ranked[i] for i in detail_pass.select if 0 <= i < len(ranked)]
    return [d for d in kept if any(d is c for c in chosen)]  # repainted in the sort order


def sort_detections(detections: list[Any], order: str, size: tuple[int, int]) -> list[Any]:
    """``none`` (the detector's order), ``left_to_right`` (box centres), ``center_to_edge``
    (distance of the box centre from the image centre), ``area`` or ``confidence`` (largest first)."""
    def centre(d):
        x0, y0, x1, y1 = d.box
        return (x0 + x1) / 2, (y0 + y1) / 2

    if order == "left_to_right":
        return sorted(detections, key=lambda d: centre(d)[0])
    if order == "center_to_edge":
        cx, cy = size[0] / 2, size[1] / 2
        return sorted(detections, key=lambda d: math.hypot(centre(d)[0] - cx, centre(d)[1] - cy))
    if order == "area":
        return sorted(detections, key=lambda d: d.area, reverse=True)
    if order == "confidence":
        return sorted(detections, key=lambda d: d.confidence, reverse=True)
    return list(detections)


def detection_mask(detection: Any, shape: tuple[int, int]) -> np.ndarray:
    """The detector's mask where it gave one (binarised), else the box filled."""
    height, width = shape
    if detection.mask is not None:
        mask = np.asarray(detection.mask)
        if mask.shape[:2] != (height, width):
            raise JobError(f"detector gave a {mask.shape[1]}×{mask.shape[0]} mask for a {width}×{height} image; "
                           "a detector's masks must have the image's size")
        return np.where(mask >= 128, 255, 0).astype(np.uint8)
    x0, y0, x1, y1 = detection.box
    mask = np.zeros((height, width), np.uint8)
    mask[max(0, int(math.floor(y0))) : max(0, int(math.ceil(y1))),
         max(0, int(math.floor(x0))) : max(0, int(math.ceil(x1)))] = 255
    return mask


def build_masks(detections: list[Any], detail_pass: Any, shape: tuple[int, int]) -> list[np.ndarray]:
    """Offset → dilate/erode → merge/invert (ADetailer's mask_preprocess), one mask per repaint."""
    masks = []
    for detection in detections:
        mask = offset(detection_mask(detection, shape), detail_pass.x_offset, detail_pass.y_offset)
        masks.append(grow(mask, detail_pass.dilate_erode))
    if detail_pass.merge == "none" or not masks:
        return masks
    merged = np.maximum.reduce(masks)
    return [255 - merged if detail_pass.merge == "merge_invert" else merged]


def offset(mask: np.ndarray, x: int, y: int) -> np.ndarray:
    """``mask`` moved ``x`` px right and ``y`` px up (ADetailer's sign); what leaves is dropped."""
    if not x and not y:
        return mask
    height, width = mask.shape
    moved = np.zeros_like(mask)
    dy = -y
    src_x0, dst_x0 = max(0, -x), max(0, x)
    src_y0, dst_y0 = max(0, -dy), max(0, dy)
    w, h = width - abs(x), height - abs(dy)
    if w > 0 and h > 0:
        moved[dst_y0 : dst_y0 + h, dst_x0 : dst_x0 + w] = mask[src_y0 : src_y0 + h, src_x0 : src_x0 + w]
    return moved


def detection_prompts(text: str, job_prompt: str, count: int) -> list[str | None]:
    """The prompt of each of ``count`` detections: ``[SEP]`` separates them (the last repeats),
    ``[PROMPT]`` is the job's prompt, an empty text is the job's prompt, and ``[SKIP]`` (None
    here) leaves that detection as it is."""
    parts = [part.strip() for part in re.split(r"\s*\[SEP\]\s*", text)] if text.strip() else [""]
    prompts: list[str | None] = []
    for index in range(count):
        part = parts[min(index, len(parts) - 1)]
        if part.upper() == "[SKIP]":
            prompts.append(None)
            continue
        if not part:
            part = job_prompt
        prompts.append(part.replace("[PROMPT]", job_prompt))
    return prompts


def repaint_size(region: Region, detail_pass: Any) -> tuple[int, int]:
    """The size a crop is repainted at: ``width``×``height`` when given, else the crop scaled so
    its shorter side is ``guide_size`` with its longer side at most ``max_size`` (multiples of 8)."""
    if detail_pass.width is not None:
        return detail_pass.width, detail_pass.height
    scale = detail_pass.guide_size / max(1, min(region.width, region.height))
    if max(region.width, region.height) * scale > detail_pass.max_size:
        scale = detail_pass.max_size / max(region.width, region.height)

    def side(value: int) -> int:
        return int(min(4096, max(64, round(value * scale / 8) * 8)))

    return side(region.width), side(region.height)


def padding_for(mask: np.ndarray, detail_pass: Any) -> int:
    """Only-masked padding: ``padding_px``, or with ``crop_factor`` the margin that makes the
    mask's bounds ``crop_factor`` times as large (FaceDetailer's crop)."""
    if detail_pass.crop_factor is None:
        return detail_pass.padding_px
    ys, xs = np.nonzero(mask)
    longest = max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    return int(round((detail_pass.crop_factor - 1) / 2 * longest))


def dynamic_denoise(denoise: float, power: float, box_area: float, image_area: float) -> float:
    """ADetailer's dynamic denoise: ``denoise × (1 - box area / image area) ** power``."""
    if power == 0:
        return denoise
    return denoise * max(0.0, 1.0 - box_area / image_area) ** power


# -- the repaint job --------------------------------------------------------------------------


def repaint_job(job: Any, detail_pass: Any, *, prompt: str, negative_prompt: str, seed: int,
                size: tuple[int, int], denoise: float, padding: int) -> Any:
    """The inpaint job that repaints one detection (the picture and mask are ``IMAGE_REF`` and
    ``MASK_REF``, served by :func:`_source`); the pass's overrides replace the job's fields."""
    from ctrlgen.core.engine.jobs import Job

    steps = detail_pass.steps or job.steps
    return Job.model_validate({
        "task": "inpaint",
        "model": detail_pass.model or job.model,
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "seed": seed,
        "steps": steps,
        "cfg_scale": job.cfg_scale if detail_pass.cfg_scale is None else detail_pass.cfg_scale,
        "sampler": detail_pass.sampler or job.sampler,
        "clip_skip": detail_pass.clip_skip or job.clip_skip,
        "width": size[0],
        "height": size[1],
        "image": IMAGE_REF,
        "mask": MASK_REF,
        "strength": max(denoise, 1.0 / steps),
        "inpaint": {"grow_px": 0, "feather_px": detail_pass.mask_blur, "only_masked": detail_pass.only_masked,
                    "padding_px": padding, "fill": detail_pass.fill},
        "control": [unit.model_dump() for unit in detail_pass.control] + hand_units(detail_pass),
    })


def hand_units(detail_pass: Any) -> list[dict[str, Any]]:
    """The hand-structure ControlNet unit of a pass (none without ``hand_structure``): it reads
    ``HAND_REF`` and comes last among the repaint job's units (:func:`pass_hooks` relies on it)."""
    if detail_pass.hand_structure is None:
        return []
    _, _, weight, mode = HAND_MAPS[detail_pass.hand_structure]
    return [{"model": detail_pass.hand_model, "image": HAND_REF, "preprocessor": "none",
             "resize_mode": "just_resize",
             "weight": weight if detail_pass.hand_weight is None else detail_pass.hand_weight,
             "control_mode": detail_pass.hand_control_mode or mode}]


def hand_landmarks(detections: list[Any], detector: str, owner: str) -> list[np.ndarray]:
    """The 21 landmarks (21×3 px) of each detection; an error naming the pass when one has none."""
    hands = []
    for index, detection in enumerate(detections):
        points = None if detection.keypoints is None else np.asarray(detection.keypoints, np.float32)
        if points is None or points.ndim != 2 or points.shape[0] != 21:
            shape = "none" if points is None else f"keypoints of shape {tuple(points.shape)}"
            raise JobError(f"{owner}.hand_structure needs 21 hand landmarks per detection; detector {detector!r} "
                           f"gave detection {index} {shape}. Use a detector with hand landmarks (mediapipe_hands) "
                           "or drop hand_structure")
        if points.shape[1] == 2:
            points = np.concatenate([points, np.zeros((21, 1), np.float32)], axis=1)
        hands.append(points[:, :3])
    return hands


def hand_map(kind: str, hands: list[np.ndarray], width: int, height: int, region: Region | None = None) -> np.ndarray:
    """The ``hand_structure`` map of ``hands`` (21×3 px over the picture) on a ``width``×``height``
    map: over the whole picture, or with ``region`` over that crop of it scaled to the map's size.
    Drawn by the registered ``hand_openpose``/``hand_depth`` preprocessor."""
    from ctrlgen.core.engine.preprocess import preprocess

    name, template, _, _ = HAND_MAPS[kind]
    if region is not None:
        scale_x, scale_y = width / region.width, height / region.height
        offset = np.array([region.x0, region.y0, 0], np.float32)
        scale = np.array([scale_x, scale_y, (scale_x + scale_y) / 2], np.float32)
        hands = [(hand - offset) * scale for hand in hands]
    canvas = np.zeros((height, width, 3), np.uint8)
    if not hands:
        return canvas
    return preprocess(name, canvas, keypoints=[hand.tolist() for hand in hands], template=template).image


def _source(picture: np.ndarray, mask: np.ndarray, outer: Callable[[str, str], np.ndarray],
            hand: np.ndarray | None = None) -> Callable[[str, str], np.ndarray]:
    """An image source serving the picture being fixed, one repaint mask and the hand map;
    other references (a pass's ControlNet images) go to the job's own source ``outer``."""
    def load(reference: str, what: str) -> np.ndarray:
        if reference == IMAGE_REF:
            return picture
        if reference == MASK_REF:
            return mask
        if reference == HAND_REF and hand is not None:
            return hand
        return outer(reference, what)

    return load


# -- running ----------------------------------------------------------------------------------


@dataclass
class PassRecord:
    """What one pass did on one image (returned in the result's ``data``)."""

    pass_index: int
    detector: str
    detections: list[dict[str, Any]] = field(default_factory=list)  # every detection found
    repainted: list[dict[str, Any]] = field(default_factory=list)  # index, prompt, seed, denoise

    def to_json(self) -> dict[str, Any]:
        return {"pass": self.pass_index, "detector": self.detector, "detections": self.detections,
                "repainted": self.repainted}


def run_passes(engine: Any, job: Any, picture: np.ndarray, seed: int, job_id: str, emit: Callable[..., None],
               cancel: Any, images: Any, preview_every: int, image_index: int = 0,
               changed: list[tuple[int, int, int, int]] | None = None) -> tuple[np.ndarray, list]:
    """Every pass of ``job.detail`` on ``picture`` (uint8 RGB or RGBA), in order; the fixed
    picture and a :class:`PassRecord` per pass. Each repaint's changed box goes to ``changed``."""
    from ctrlgen.core.errors import CancelledError
    from ctrlgen.core.images import to_rgb

    records = []
    picture = np.array(picture)  # this function's own copy: repaints are pasted into it
    for pass_index, detail_pass in enumerate(job.detail):
        owner = f"detail[{pass_index}]"
        if cancel is not None and cancel.is_set():
            raise CancelledError(f"job {job_id} was cancelled")
        rgb = to_rgb(picture, "the picture to fix")
        height, width = rgb.shape[:2]
        found = detect(detail_pass, rgb, owner)
        chosen = select(found, detail_pass, (width, height))
        masks = build_masks(chosen, detail_pass, (height, width))
        prompts = detection_prompts(detail_pass.prompt, job.prompt, len(masks))
        negatives = detection_prompts(detail_pass.negative_prompt, job.negative_prompt, len(masks))
        record = PassRecord(pass_index, detail_pass.detector, [d.to_json() for d in found])
        emit("detail", phase="detected", image_index=image_index, pass_index=pass_index, found=len(found),
             detections=len(masks), boxes=[list(d.to_json()["box"]) for d in chosen])
        base = detail_pass.seed if detail_pass.seed is not None and detail_pass.seed >= 0 else seed
        for cycle in range(detail_pass.cycles):
            for index, mask in enumerate(masks):
                where = dict(image_index=image_index, pass_index=pass_index, detection=index, detections=len(masks),
                             cycle=cycle)
                if prompts[index] is None or not mask.any():
                    emit("detail", phase="skipped", reason="[SKIP]" if prompts[index] is None else "empty mask",
                         **where)
                    continue
                detection_seed = (base + index + cycle * len(masks)) % 2**32
                box_area = chosen[index].area if detail_pass.merge == "none" else float((mask > 0).sum())
                denoise = dynamic_denoise(detail_pass.denoise, detail_pass.dynamic_denoise_power, box_area,
                                          float(width * height))
                hands = None
                if detail_pass.hand_structure is not None:  # this detection's hand, or all with a merged mask
                    hands = hand_landmarks([chosen[index]] if detail_pass.merge == "none" else chosen,
                                           detail_pass.detector, owner)
                picture = repaint(engine, job, detail_pass, picture, mask, hands=hands, prompt=prompts[index],
                                  negative_prompt=negatives[index] or "", seed=detection_seed, denoise=denoise,
                                  job_id=job_id, emit=emit, cancel=cancel, images=images,
                                  preview_every=preview_every, where=where, owner=owner, changed=changed)
                if cycle == 0:
                    record.repainted.append({"detection": index, "prompt": prompts[index], "seed": detection_seed,
                                             "denoise": round(denoise, 4)})
                emit("detail", phase="done", **where)
        records.append(record)
    return picture, records


def repaint(engine: Any, job: Any, detail_pass: Any, picture: np.ndarray, mask: np.ndarray, *, prompt: str,
            negative_prompt: str, seed: int, denoise: float, job_id: str, emit: Callable[..., None], cancel: Any,
            images: Any, preview_every: int, where: dict[str, Any], owner: str,
            hands: list[np.ndarray] | None = None, changed: list[tuple[int, int, int, int]] | None = None
            ) -> np.ndarray:
    """One detection repainted: an inpaint job through the engine's steps 2-8 with the pass's
    seams (soft inpainting, colour matching) and, with ``hands`` (the pass's ``hand_structure``),
    the hand map on its ControlNet unit. Returns the picture with the patch pasted back."""
    height, width = mask.shape
    padding = padding_for(mask, detail_pass)
    region = masked_region(mask, padding) if detail_pass.only_masked else Region(0, 0, width, height)
    sub = repaint_job(job, detail_pass, prompt=prompt, negative_prompt=negative_prompt, seed=seed,
                      size=repaint_size(region, detail_pass), denoise=denoise, padding=padding)
    hand_picture_map = hand_crop_map = None
    if hands is not None:
        kind = detail_pass.hand_structure
        hand_picture_map = hand_map(kind, hands, width, height)

        def hand_crop_map(crop: Region, map_width: int, map_height: int) -> np.ndarray:
            return hand_map(kind, hands, map_width, map_height, crop)

    source = _source(picture, mask, images, hand_picture_map)
    try:
        checked = engine.check(sub, source)
    except CtrlgenError as exc:
        raise _under(owner, exc, _hand_unit(detail_pass)) from None

    def sub_emit(kind: str, **data: Any) -> None:
        if kind == "progress":
            emit("detail", phase="step", step=data["step"], total=data["total"], **where)
        elif kind == "preview":
            emit("preview", **data, **where)

    vae = vae_entry(engine, detail_pass.vae, owner) if detail_pass.vae is not None else None
    customize = pass_hooks(detail_pass.soft_inpainting, detail_pass.colour_match, detail_pass.mask_blur,
                           vae=None if vae is None else (lambda like: engine.load_vae(vae, like)),
                           hand=hand_crop_map)
    result = engine._generate(sub, checked, job_id, sub_emit, cancel, source, preview_every, customize=customize,
                              region_only=True)
    image = np.asarray(result.images[0])
    x, y = result.offset
    if changed is not None and result.changed_box is not None:
        x0, y0, x1, y1 = result.changed_box
        changed.append((x + x0, y + y0, x + x1, y + y1))
    # Only the region comes back from a region frame (region_only): paste it (the whole picture
    # otherwise). ``picture`` is run_passes' own copy.
    picture[y : y + image.shape[0], x : x + image.shape[1]] = image
    return picture


def union_box(boxes: list[tuple[int, int, int, int]]) -> tuple[int, int, int, int]:
    """The box around ``boxes`` ((0, 0, 0, 0): nothing changed)."""
    boxes = [b for b in boxes if b[2] > b[0] and b[3] > b[1]]
    if not boxes:
        return (0, 0, 0, 0)
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


# -- seams --------------------------------------------------------------------------------------


def pass_hooks(soft: bool, colour: bool, feather_px: float, vae: Callable[[Any], Any] | None = None,
               hand: Callable[[Region, int, int], np.ndarray] | None = None) -> Callable[[Any, Any], Any] | None:
    """The ``customize`` hook of :meth:`Engine._generate` for a repaint: the pass's VAE (``vae(like)``
    loads it), the hand map drawn at the crop (``hand(region, width, height)``), soft inpainting
    and colour matching, as switched on (None: none of them)."""
    if not soft and not colour and vae is None and hand is None:
        return None

    @contextlib.contextmanager
    def customize(context: Any, task_inputs: Any) -> Iterator[None]:
        if vae is not None:  # on the job-local view only; the cached pipeline keeps its own
            context.pipeline.register_modules(vae=vae(context.pipeline.vae))
        frame = task_inputs.frame
        region = frame.region
        if hand is not None:
            _use_crisp_hand_map(context, hand(region, context.width, context.height))
        from ctrlgen.core.images import resize

        def at_size(alpha: np.ndarray) -> np.ndarray:  # a map over the region -> the generation size
            crop = np.ascontiguousarray(alpha)
            return resize((crop * 255 + 0.5).astype(np.uint8), context.width, context.height).astype(np.float32) / 255

        alpha = at_size(frame.region_alpha())
        if colour:
            task_inputs.finish = _colour_matched(task_inputs.finish, context.call_kwargs["image"], frame, at_size,
                                                 feather_px)
            if task_inputs.finish_region is not None:
                task_inputs.finish_region = _colour_matched(task_inputs.finish_region, context.call_kwargs["image"],
                                                            frame, at_size, feather_px)
        if not soft:
            yield
            return
        from PIL import Image

        # The pipeline keeps the original wherever its (binary) mask is 0: give it everything
        # the feathered mask touches, and blend by the feather ourselves at every step.
        context.call_kwargs["mask_image"] = Image.fromarray(np.where(alpha > 0, 255, 0).astype(np.uint8))
        with _soft_inpainting(context, alpha):
            yield

    return customize


def _use_crisp_hand_map(context: Any, drawn: np.ndarray) -> None:
    """Give the hand unit (the repaint job's last ControlNet unit) its map drawn at the crop's
    generation size: the map over the picture, cropped and scaled up, would blur a small hand's
    lines. The ControlNet adapter restores ``call_kwargs`` when the job ends."""
    from PIL import Image

    drawn_image = Image.fromarray(drawn)
    images = context.call_kwargs.get("control_image")
    if isinstance(images, list):
        context.call_kwargs["control_image"] = images[:-1] + [drawn_image]
    elif images is not None:
        context.call_kwargs["control_image"] = drawn_image
    context.control_maps.append(drawn)


@contextlib.contextmanager
def _soft_inpainting(context: Any, alpha: np.ndarray) -> Iterator[None]:
    """Every step, ``latents = a·latents + (1 - a)·original`` with ``a`` the feathered mask at
    latent size and ``original`` the picture's latents noised to the next step's level (the
    pipeline's own image latents and noise, taken from its ``prepare_latents``)."""
    import inspect

    import torch

    pipeline = context.pipeline
    original = pipeline.prepare_latents
    signature = inspect.signature(original)
    captured: dict[str, Any] = {}

    def prepare_latents(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        wanted_noise = bound.arguments.get("return_noise", False)
        wanted_image = bound.arguments.get("return_image_latents", False)
        if "return_noise" in signature.parameters and "return_image_latents" in signature.parameters:
            bound.arguments["return_noise"] = True
            bound.arguments["return_image_latents"] = True
        outputs = original(*bound.args, **bound.kwargs)
        if not isinstance(outputs, tuple) or len(outputs) < 3:
            return outputs
        latents, noise, image_latents = outputs[0], outputs[1], outputs[2]
        captured.update(noise=noise, image_latents=image_latents)
        return (latents,) + ((noise,) if wanted_noise else ()) + ((image_latents,) if wanted_image else ())

    def blend(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        latents = tensors.get("latents")
        if latents is None or "image_latents" not in captured:
            return {}
        weight = torch.from_numpy(alpha)[None, None].to(latents.device, latents.dtype)
        weight = torch.nn.functional.interpolate(weight, size=tuple(latents.shape[-2:]), mode="area")
        scheduler = pipe.scheduler
        timesteps = scheduler.timesteps
        index = getattr(scheduler, "step_index", None)
        if index is None:
            matches = (timesteps == timestep).nonzero()
            index = int(matches[0]) + 1 if len(matches) else len(timesteps)
        target = captured["image_latents"].to(latents.device, latents.dtype)
        if index < len(timesteps):
            target = scheduler.add_noise(target, captured["noise"].to(latents.device, latents.dtype),
                                         timesteps[index : index + 1])
        return {"latents": latents * weight + target * (1 - weight)}

    pipeline.prepare_latents = prepare_latents
    context.step_callbacks.append(blend)
    try:
        yield
    finally:
        context.step_callbacks.remove(blend)
        if pipeline.__dict__.get("prepare_latents") is prepare_latents:
            del pipeline.__dict__["prepare_latents"]


def _colour_matched(finish: Callable[[Any], Any], init: Any, frame: Any, at_size: Callable, feather_px: float):
    """``finish`` with the generated picture first shifted by the mean colour difference to the
    original along the mask's border (a band as wide as the feather on both sides)."""
    from PIL import Image

    radius = max(2, int(math.ceil(feather_px)))
    # The band over the region, grown on the region plus the radius (the mask beyond the region
    # counts, as on the whole picture).
    box = frame.region.grown(radius + 1, *frame.size)
    mask = frame.mask_over(box)
    band_box = (grow(mask, radius) > 0) & ~(grow(mask, -radius) > 0)
    band = at_size(frame.region.relative_to(box).crop(band_box).astype(np.float32)) > 0.5
    original = np.asarray(init.convert("RGB")).astype(np.float32)

    def finish_matched(generated: Any) -> Any:
        pixels = np.asarray(generated.convert("RGB")).astype(np.float32)
        if band.any() and pixels.shape == original.shape:
            shift = (original[band] - pixels[band]).mean(axis=0)
            pixels = np.clip(pixels + shift + 0.5, 0, 255)
        return finish(Image.fromarray(pixels.astype(np.uint8)))

    return finish_matched


# -- the two places passes run ------------------------------------------------------------------


def fix_result(engine: Any, result: Any, emit: Callable[..., None], cancel: Any, images: Any,
               preview_every: int) -> Any:
    """A generation job's results with ``job.detail`` run on each (step 9 of ``Engine._run``)."""
    fixed, records = [], []
    changed = [] if result.changed_box is None else [result.changed_box]
    for index, (image, seed) in enumerate(zip(result.images, result.seeds, strict=False)):
        picture, passes = run_passes(engine, result.job, np.asarray(image), seed, result.job_id, emit, cancel,
                                     images, preview_every, image_index=index, changed=changed)
        fixed.append(_to_image(picture))
        records.append({"detail": [record.to_json() for record in passes]})
    result.images = fixed
    if result.changed_box is not None:  # an inpaint's box grows by the passes'; a new image stays new
        result.changed_box = union_box(changed)
    result.data = [{**(result.data[i] if i < len(result.data) and result.data[i] else {}), **records[i]}
                   for i in range(len(fixed))]
    return result


def fix_image(engine: Any, job: Any, job_id: str, emit: Callable[..., None], cancel: Any,
              images: Callable[[str, str], np.ndarray], preview_every: int) -> tuple[Any, int, dict[str, Any]]:
    """A ``fix`` job: the passes on ``job.image``, nothing regenerated. Returns the fixed image,
    the seed and what the passes did (the engine makes the result of them)."""
    import secrets

    from ctrlgen.core.images import to_rgb

    pixels = images(job.image, "job.image")
    if pixels.ndim == 2 or pixels.shape[2] != 4:
        pixels = to_rgb(pixels, "job.image")
    seed = job.seed if job.seed >= 0 else secrets.randbelow(2**32)
    changed: list[tuple[int, int, int, int]] = []
    picture, passes = run_passes(engine, job, pixels, seed, job_id, emit, cancel, images, preview_every,
                                 changed=changed)
    return _to_image(picture), seed, {"detail": [record.to_json() for record in passes],
                                      "changed_box": union_box(changed)}


def _to_image(picture: np.ndarray) -> Any:
    from PIL import Image

    return Image.fromarray(picture, "RGBA" if picture.ndim == 3 and picture.shape[2] == 4 else "RGB")


__all__ = ["check_passes", "detect", "select", "build_masks", "detection_prompts", "repaint_size", "run_passes",
           "fix_image", "fix_result"]
