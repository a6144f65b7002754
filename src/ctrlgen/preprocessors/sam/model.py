"""Segment Anything: the checkpoints, a loader that reads the architecture from the weights,
and parsing of click/box prompts given as JSON text.

The official checkpoints (``sam_vit_h_4b8939.pth`` & co.) are plain state dicts of
segment_anything's ``Sam``. :func:`build_sam` sizes the image encoder (width, depth,
heads, global-attention blocks, window, input size) and the decoder from the tensors'
names and shapes, builds ``Sam`` from segment_anything's own modules and loads the
weights strictly — so ViT-H/L/B and any smaller SAM-format checkpoint load the same way.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ctrlgen.core.errors import ModelFormatError, ParamError
from ctrlgen.core.plugins.specs import WeightFile

SOURCE = "ybelkada/segment-anything"  # checkpoints/ holds Meta's files under their own names
SAM_FILES = {
    "vit_h": "sam_vit_h_4b8939.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_b": "sam_vit_b_01ec64.pth",
}
SAM_WEIGHTS = {kind: WeightFile(name, source=SOURCE) for kind, name in SAM_FILES.items()}
ANY_SAM = WeightFile(SAM_FILES["vit_h"], source=SOURCE, alternatives=(SAM_FILES["vit_l"], SAM_FILES["vit_b"]))
MODEL_CHOICES = ("auto", "vit_h", "vit_l", "vit_b")
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
DECODER_HEADS = 8  # not recorded in the weights; every SAM release uses 8

_BLOCK = re.compile(r"^image_encoder\.blocks\.(\d+)\.")
_DECODER_LAYER = re.compile(r"^mask_decoder\.transformer\.layers\.(\d+)\.")
_IOU_LAYER = re.compile(r"^mask_decoder\.iou_prediction_head\.layers\.(\d+)\.weight$")


def sam_config(state: dict[str, Any]) -> dict[str, Any]:
    """The ``Sam`` hyper-parameters a state dict was trained with."""
    try:
        patch = state["image_encoder.patch_embed.proj.weight"]
        embed_dim, patch_size = int(patch.shape[0]), int(patch.shape[-1])
        grid = int(state["image_encoder.pos_embed"].shape[1])
        depth = 1 + max(int(m.group(1)) for key in state if (m := _BLOCK.match(key)))
        rel_rows = [int(state[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0]) for i in range(depth)]
        head_dim = int(state["image_encoder.blocks.0.attn.rel_pos_h"].shape[1])
        windowed = [rows for rows in rel_rows if rows != 2 * grid - 1]
        return {
            "embed_dim": embed_dim,
            "depth": depth,
            "num_heads": embed_dim // head_dim,
            "global_attn_indexes": [i for i, rows in enumerate(rel_rows) if rows == 2 * grid - 1],
            "window_size": (windowed[0] + 1) // 2 if windowed else 0,
            "img_size": grid * patch_size,
            "patch_size": patch_size,
            "mlp_ratio": state["image_encoder.blocks.0.mlp.lin1.weight"].shape[0] / embed_dim,
            "out_chans": int(state["image_encoder.neck.0.weight"].shape[0]),
            "mask_in_chans": int(state["prompt_encoder.mask_downscaling.3.weight"].shape[0]),
            "decoder_depth": 1 + max(int(m.group(1)) for key in state if (m := _DECODER_LAYER.match(key))),
            "decoder_mlp_dim": int(state["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0]),
            "num_multimask_outputs": int(state["mask_decoder.mask_tokens.weight"].shape[0]) - 1,
            "iou_head_depth": 1 + max(int(m.group(1)) for key in state if (m := _IOU_LAYER.match(key))),
            "iou_head_hidden_dim": int(state["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0]),
        }
    except (KeyError, ValueError) as exc:
        raise ModelFormatError(
            f"these weights are not a Segment Anything (ViT) checkpoint: {exc!r} is missing or malformed. "
            "Use Meta's sam_vit_h_4b8939.pth, sam_vit_l_0b3195.pth or sam_vit_b_01ec64.pth"
        ) from None


def build_sam(state: dict[str, Any], device: str = "cpu"):
    """segment_anything's ``Sam`` sized from ``state``, with ``state`` loaded (strict), in eval mode."""
    from functools import partial

    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    cfg = sam_config(state)
    grid = cfg["img_size"] // cfg["patch_size"]
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=cfg["depth"], embed_dim=cfg["embed_dim"], img_size=cfg["img_size"],
            mlp_ratio=cfg["mlp_ratio"],
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=cfg["num_heads"],
            patch_size=cfg["patch_size"], qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=cfg["global_attn_indexes"], window_size=cfg["window_size"],
            out_chans=cfg["out_chans"],
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=cfg["out_chans"], image_embedding_size=(grid, grid),
            input_image_size=(cfg["img_size"], cfg["img_size"]), mask_in_chans=cfg["mask_in_chans"],
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=cfg["num_multimask_outputs"],
            transformer=TwoWayTransformer(depth=cfg["decoder_depth"], embedding_dim=cfg["out_chans"],
                                          mlp_dim=cfg["decoder_mlp_dim"], num_heads=DECODER_HEADS),
            transformer_dim=cfg["out_chans"], iou_head_depth=cfg["iou_head_depth"],
            iou_head_hidden_dim=cfg["iou_head_hidden_dim"],
        ),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )
    try:
        sam.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelFormatError(f"the Segment Anything weights do not fit the inferred model: {exc}") from None
    return sam.eval().to(device)


def _json(text: str, label: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParamError(f"{label}={text!r} is not valid JSON ({exc.msg}); e.g. {_EXAMPLES[label]}") from None


_EXAMPLES = {"sam.points": "'[[120, 80, 1], [40, 30, 0]]'", "sam.box": "'[10, 20, 200, 180]'"}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_points(text: str, width: int, height: int) -> list[tuple[float, float, int]]:
    """``[[x, y, label], ...]`` (label 1 = the object, 0 = not it; ``[x, y]`` means 1), in image pixels."""
    label = "sam.points"
    if not text.strip():
        return []
    value = _json(text, label)
    if not isinstance(value, list) or not all(isinstance(p, list) for p in value):
        raise ParamError(f"{label} must be a JSON list of [x, y, label] points; e.g. {_EXAMPLES[label]}")
    points = []
    for point in value:
        if len(point) not in (2, 3) or not all(_number(v) for v in point[:2]):
            raise ParamError(f"{label}: {point!r} is not [x, y] or [x, y, label] with numbers")
        kind = point[2] if len(point) == 3 else 1
        if kind not in (0, 1):
            raise ParamError(f"{label}: {point!r} has label {kind!r}; use 1 (the object) or 0 (background)")
        x, y = float(point[0]), float(point[1])
        if not (0 <= x <= width and 0 <= y <= height):
            raise ParamError(f"{label}: point ({x:g}, {y:g}) is outside the {width}×{height} image")
        points.append((x, y, int(kind)))
    return points


def parse_box(text: str, width: int, height: int) -> tuple[float, float, float, float] | None:
    """``[x0, y0, x1, y1]`` in image pixels, or None for an empty string."""
    label = "sam.box"
    if not text.strip():
        return None
    value = _json(text, label)
    if not isinstance(value, list) or len(value) != 4 or not all(_number(v) for v in value):
        raise ParamError(f"{label} must be four numbers [x0, y0, x1, y1]; e.g. {_EXAMPLES[label]}")
    x0, y0, x1, y1 = (float(v) for v in value)
    if not (x0 < x1 and y0 < y1):
        raise ParamError(f"{label}={value!r}: x0 must be left of x1 and y0 above y1")
    if x1 < 0 or y1 < 0 or x0 > width or y0 > height:
        raise ParamError(f"{label}={value!r} lies outside the {width}×{height} image")
    return (x0, y0, x1, y1)
