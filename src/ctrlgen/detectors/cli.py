"""``ctrlgen detect NAME IMAGE``: run a detector on an image file; print, save as JSON, draw."""

from __future__ import annotations

import argparse
import json
import sys

from ctrlgen.core.plugins.manager import hookimpl


def assignment(text: str, example: str = "confidence=0.5") -> tuple[str, object]:
    """``NAME=VALUE`` from the command line; VALUE is read as JSON when it parses (``--param``, ``--set``)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r}: write it as NAME=VALUE (e.g. {example})")
    name, value = text.split("=", 1)
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return name.strip(), parsed


def _param(text: str) -> tuple[str, object]:
    return assignment(text, "confidence=0.5")


def cmd_detect(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from ctrlgen.core.engine.detect import detect
    from ctrlgen.core.errors import CtrlgenError

    try:
        image = np.asarray(Image.open(args.image).convert("RGB"))
    except OSError as exc:
        raise CtrlgenError(f"cannot read the image {args.image}: {exc}") from None
    found = detect(args.name, image, **dict(args.param or ()))
    if args.draw:
        from ctrlgen.detectors.draw import draw_detections

        Image.fromarray(draw_detections(image, found)).save(args.draw)
    if args.json:
        json.dump({"detector": args.name, "image": args.image, "width": image.shape[1], "height": image.shape[0],
                   "detections": [d.to_json() for d in found]}, sys.stdout, indent=2)
        print()
        return 0
    print(f"{len(found)} found by {args.name} in {args.image} ({image.shape[1]}×{image.shape[0]})")
    for index, detection in enumerate(found):
        box = ", ".join(f"{v:.0f}" for v in detection.box)
        extra = " mask" if detection.mask is not None else ""
        extra += f" {len(detection.keypoints)} keypoints" if detection.keypoints is not None else ""
        print(f"  {index}: {detection.label} {detection.confidence:.3f} box=({box}){extra}")
    if args.draw:
        print(f"drawn: {args.draw}")
    return 0


@hookimpl
def ctrlgen_cli_commands(subparsers) -> None:
    parser = subparsers.add_parser(
        "detect", help="find faces, hands or people in an image with a detector",
        description="Run a detector (`ctrlgen plugins --all` lists them) on an image and print its boxes.")
    parser.add_argument("name", help="detector name, e.g. mediapipe_face_full, mediapipe_hands, yolo")
    parser.add_argument("image", help="image file")
    parser.add_argument("--param", action="append", type=_param, metavar="NAME=VALUE",
                        help="a detector param (repeatable); VALUE is read as JSON when it parses")
    parser.add_argument("--json", action="store_true", help="print the detections as JSON")
    parser.add_argument("--draw", metavar="OUT.png", help="save the image with boxes, masks and keypoints drawn")
    parser.set_defaults(func=cmd_detect)
