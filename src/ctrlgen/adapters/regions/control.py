"""A region's own ControlNet units: their residuals reach only the latents under its mask.

Each unit is written and checked like one in ``job.control`` (the model found by its header, the
preprocessor and its params, the image; errors name ``adapters[i] (region).control[k]``), its map
made by the preprocessor on the whole picture (for inpaint jobs then brought onto the outpainted
canvas or the only-masked crop, as the job's own units are) and its ControlNet loaded through the engine's cache. A forward
pre-hook on the UNet runs the region's ControlNets on each call's inputs, multiplies every
residual by the region's mask at the residual's resolution and adds it to the residuals the call
already carries (the job's own units'). In a tiled pass (upscale's refine, a tiled hires fix) the
hook defers the work to the tiler (:func:`ctrlgen.core.engine.tiling.defer`): each tile runs the
region's ControlNets on its part of the map, with its part of the mask. Per unit: ``weight``, ``guidance_start``,
``guidance_end``; the control mode is balanced (union and inpaint ControlNets are refused).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ctrlgen.core.errors import CtrlgenError, JobError


def check_structure(value: Any) -> None:
    """The ``control`` param's shape: a list of unit objects (validated fully by :func:`prepare`)."""
    if not isinstance(value, list) or not all(isinstance(unit, dict) for unit in value):
        raise ValueError("must be a list of ControlNet units ({\"model\": ..., \"preprocessor\": ..., ...}), as in "
                         "job.control")


def _region_job(job: Any, units: list[dict], owner: str) -> Any:
    from pydantic import ValidationError

    from ctrlgen.core.engine.jobs import ControlUnit, format_validation_error

    parsed = []
    for index, unit in enumerate(units):
        try:
            parsed.append(ControlUnit.model_validate(unit))
        except ValidationError as exc:
            raise JobError(format_validation_error(exc, f"{owner}.control[{index}]")) from None
        if not parsed[-1].model:
            raise JobError(f"{owner}.control[{index}].model is missing: name a ControlNet (`ctrlgen models`)")
    return job.model_copy(update={"control": parsed})


def prepare(context: Any, units: list[dict], owner: str, maps: bool = False) -> tuple[Any, list[Any]]:
    """The region's units checked as the engine checks ``job.control`` (and with ``maps``, their
    control maps computed); returns the job they were checked as and the ``PreparedUnit`` list."""
    region_job = _region_job(context.job, units, owner)
    engine = context.engine
    try:
        prepared = (engine.prepare_units if maps else engine.check_units)(region_job, context.architecture,
                                                                            context.image_source)
    except CtrlgenError as exc:
        exc.args = (f"{owner}.{exc}" if str(exc).startswith("control[") else f"{owner}: {exc}",)
        raise exc.with_traceback(None) from None
    for unit in prepared:
        label, params = f"{owner}.control[{unit.index}]", unit.params
        if unit.model_entry.identity.variant == "union":
            raise JobError(f"{label}: union ControlNets are not supported in a region yet; use a regular ControlNet")
        if unit.preprocessor.lower().startswith("inpaint"):
            raise JobError(f"{label}: inpaint ControlNet units act on the job's mask; put them in job.control")
        if params["control_mode"] != "balanced":
            raise JobError(f"{label}.control_mode={params['control_mode']!r}: a region's units run balanced; drop "
                           "control_mode")
        if params["guidance_start"] >= params["guidance_end"]:
            raise JobError(f"{label}.guidance_start={params['guidance_start']} must be below "
                           f"guidance_end={params['guidance_end']}")
    return region_job, prepared


class RegionControl:
    """The UNet hooks that add the regions' masked ControlNet residuals (see the module)."""

    def __init__(self, total_steps: int) -> None:
        self.units: list[tuple[Any, Any, np.ndarray, dict[str, Any]]] = []  # (model, image, mask, params)
        self.total = max(1, total_steps)
        self.step = 0
        self.depth = 0
        self.handles: list[Any] = []
        self.moved: list[tuple[Any, Any]] = []
        self._masks: dict[tuple, Any] = {}

    def add(self, context: Any, region_job: Any, prepared: list[Any], mask: np.ndarray) -> list[Any]:
        """Queue ``prepared`` units (maps computed) of a region; returns their ControlNet modules."""
        import torch

        from ctrlgen.core.engine.engine import fit_control

        frame = context.inpaint_frame
        if frame is not None:
            for unit in prepared:
                unit.control_image = frame.to_region(unit.control_image)
        modes = [region_job.control[unit.index].resize_mode for unit in prepared]
        images = fit_control(prepared, context.width, context.height, modes)
        modules = []
        for unit, image in zip(prepared, images, strict=True):
            model = context.engine.load_controlnet(unit.model_entry, context.architecture)
            tensor = torch.from_numpy(np.asarray(image, np.float32) / 255.0).permute(2, 0, 1)[None]
            self.units.append((model, tensor, mask, unit.params))
            context.control_maps.append(unit.control_image)
            modules.append(model)
        return modules

    def attach(self, unet: Any) -> None:
        if not self.units:
            return
        # Prepended: they run before other adapters' UNet hooks, so a nested UNet call those make
        # (reference-only's) is seen as nested and gets no residuals.
        self.handles = [unet.register_forward_pre_hook(self._before, with_kwargs=True, prepend=True),
                        unet.register_forward_hook(self._after, with_kwargs=True, prepend=True)]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        for model, device in self.moved:
            model.to(device)
        self.moved = []
        self._masks.clear()

    def on_step_end(self, pipe, step, timestep, tensors):
        self.step, self.depth = step + 1, 0
        return None

    def _mask(self, mask: np.ndarray, height: int, width: int, like: Any, window: Any = None) -> Any:
        import torch
        import torch.nn.functional as F

        tile = None if window is None else window[0]
        key = (id(mask), height, width, like.dtype, like.device, tile)
        if key not in self._masks:
            if window is not None:  # a tile: its part of the mask (the mask is at pixel scale)
                rows, cols = tile.slices(mask.shape[0] // window[1][0])
                mask = mask[rows, cols]
            full = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
            self._masks[key] = F.interpolate(full, size=(height, width), mode="area").to(like.device, like.dtype)
        return self._masks[key]

    def _before(self, module, args, kwargs):
        from ctrlgen.core.engine import tiling

        self.depth += 1
        if self.depth > 1:
            return None
        if not self._active():  # no unit at this step: the call as it was
            return None
        names = ("sample", "timestep", "encoder_hidden_states")
        call = dict(zip(names, args, strict=False)) | dict(kwargs)
        if tiling.is_tiled(module):  # per tile: maps and masks cut to each tile
            images = tuple(image for _, image, _, _ in self.units)
            deferred = tiling.defer(self._tile_residuals, (call["sample"], call["timestep"],
                                                           call["encoder_hidden_states"], images),
                                    {"added_cond_kwargs": call.get("added_cond_kwargs")},
                                    call.get("down_block_additional_residuals"))
            kwargs = dict(call)
            kwargs["down_block_additional_residuals"] = deferred
            kwargs["mid_block_additional_residual"] = deferred
            return (), kwargs
        down, mid = self._residuals(call["sample"], call["timestep"], call["encoder_hidden_states"],
                                    [image for _, image, _, _ in self.units], call.get("added_cond_kwargs"),
                                    call.get("down_block_additional_residuals"),
                                    call.get("mid_block_additional_residual"))
        if down is None:
            return None
        kwargs = dict(call)
        kwargs["down_block_additional_residuals"] = tuple(down)
        kwargs["mid_block_additional_residual"] = mid
        return (), kwargs

    def _active(self) -> bool:
        return any(self._on(params) for _, _, _, params in self.units)

    def _on(self, params) -> bool:
        start, end = params["guidance_start"], params["guidance_end"]
        return not (self.step / self.total < start or (self.step + 1) / self.total > end or params["weight"] == 0)

    def _tile_residuals(self, sample, timestep, states, images, added_cond_kwargs=None):
        """The units' masked residuals for the tile being denoised (images and masks cut to it)."""
        from ctrlgen.core.engine.tiling import current_tile

        return self._residuals(sample, timestep, states, list(images), added_cond_kwargs, None, None,
                               window=current_tile())

    def _residuals(self, sample, timestep, states, images, added_cond_kwargs, down, mid, window=None):
        """The units on at this step: their residuals, each times its mask (cut to ``window``,
        ``(tile, canvas)``, when tiled), added to ``down`` / ``mid``."""
        for (model, _, mask, params), image in zip(self.units, images, strict=True):
            if not self._on(params):
                continue
            self._on_device(model, sample.device)
            cond = image.to(sample.device, sample.dtype).expand(sample.shape[0], -1, -1, -1)
            unit_down, unit_mid = model(sample, timestep, encoder_hidden_states=states, controlnet_cond=cond,
                                        conditioning_scale=params["weight"], added_cond_kwargs=added_cond_kwargs,
                                        return_dict=False)
            unit_down = [r * self._mask(mask, r.shape[-2], r.shape[-1], r, window) for r in unit_down]
            unit_mid = unit_mid * self._mask(mask, unit_mid.shape[-2], unit_mid.shape[-1], unit_mid, window)
            down = unit_down if down is None else [a + b for a, b in zip(down, unit_down, strict=True)]
            mid = unit_mid if mid is None else mid + unit_mid
        return down, mid

    def _after(self, module, args, kwargs, output):
        self.depth = max(0, self.depth - 1)
        return None

    def _on_device(self, model: Any, device: Any) -> None:
        current = next(model.parameters()).device
        if current != device:  # an offloading engine keeps ControlNets in RAM: for this job only
            self.moved.append((model, current))
            model.to(device)
