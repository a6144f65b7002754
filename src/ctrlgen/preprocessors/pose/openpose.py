"""OpenPose (CMU) body, hand and face keypoints with controlnet-aux's networks.

Five variants as in sd-webui-controlnet: ``openpose`` (body), ``openpose_hand``,
``openpose_face``, ``openpose_full`` and ``openpose_faceonly``. The networks are
controlnet-aux's classes filled with the lllyasviel/Annotators state dicts from the model
store; detection is controlnet-aux's (body part affinity fields, hand and face boxes from
the body). Every variant returns OpenPose JSON; :func:`render_openpose` draws a map from
(edited) JSON. Differences from controlnet-aux: the map is drawn at the input's size with
limbs scaled like its resized map, and the face has its 70 landmarks in order (missing ones
as 0,0,0) without the stray dot controlnet-aux draws for the network's background channel.
"""

from __future__ import annotations

import numpy as np

from ctrlgen.core.images import DETECT_RESOLUTION, detection_size, resize
from ctrlgen.core.models.annotators import loaded, torch_device, unloader, weight_path
from ctrlgen.core.plugins.manager import hookimpl
from ctrlgen.core.plugins.specs import PreprocessorSpec, WeightFile
from ctrlgen.preprocessors.pose.openpose_json import (
    Person,
    PoseJSONError,
    line_scale_for,
    pose_result,
    render_openpose,
)

__all__ = ["render_openpose", "PoseJSONError", "detect_people"]

OWNER = "openpose"
BODY = WeightFile("body_pose_model.pth", source="lllyasviel/Annotators")
HAND = WeightFile("hand_pose_model.pth", source="lllyasviel/Annotators")
FACE = WeightFile("facenet.pth", source="lllyasviel/Annotators")

# name: (draw body, detect+draw hands, detect+draw face, description)
VARIANTS = {
    "openpose": (True, False, False, "OpenPose body skeleton (18 keypoints)"),
    "openpose_hand": (True, True, False, "OpenPose body and hands"),
    "openpose_face": (True, False, True, "OpenPose body and face landmarks"),
    "openpose_full": (True, True, True, "OpenPose body, hands and face"),
    "openpose_faceonly": (False, False, True, "OpenPose face landmarks only (the body finds the face)"),
}


def _upstream(module: str):
    """A controlnet-aux module; importing the package imports all its detectors, which warn."""
    import importlib
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module(f"controlnet_aux.open_pose.{module}")


def _network(weight: WeightFile, net_class_name: str, strip_first_key_part: bool):
    """controlnet-aux's network class holding the state dict of ``weight`` from the store."""
    path = weight_path(OWNER, weight)  # a missing file is reported before any heavy import
    import torch

    from ctrlgen.core.errors import ModelFormatError
    from ctrlgen.core.models.identify import load_state_dict

    module = "face" if net_class_name == "FaceNet" else "model"
    net_class = getattr(_upstream(module), net_class_name)
    state = load_state_dict(path, allow_pickle=True)
    with torch.device("meta"):  # no random init of ~50M parameters that are overwritten anyway
        net = net_class()
    # The CMU files name layers without controlnet-aux's stage prefix ("conv1_1.weight" for
    # "model0.conv1_1.weight"): the mapping controlnet-aux's util.transfer does.
    wanted = {name: name.split(".", 1)[1] if strip_first_key_part else name for name in net.state_dict()}
    missing = [key for key in wanted.values() if key not in state]
    if missing:
        raise ModelFormatError(f"{path} is not an OpenPose {weight.filename}: it lacks {', '.join(missing[:3])}"
                               f"{' and more' if len(missing) > 3 else ''}; download it again from {weight.source}")
    try:
        net.load_state_dict({name: state[key] for name, key in wanted.items()}, assign=True)
    except RuntimeError as exc:
        raise ModelFormatError(f"{path} does not fit the OpenPose network: {exc}") from None
    return net.to(torch_device()).eval()


def _estimator(kind: str, weight: WeightFile, net_class_name: str, strip_first_key_part: bool):
    """controlnet-aux's Body/Hand/Face around our network, loaded once."""
    def load():
        net = _network(weight, net_class_name, strip_first_key_part)
        estimator_class = getattr(_upstream(kind), kind.capitalize())
        estimator = estimator_class.__new__(estimator_class)  # its __init__ would torch.load a path itself
        estimator.model = net
        return estimator

    return loaded(OWNER, load, key=kind)


def _body():
    return _estimator("body", BODY, "bodypose_model", strip_first_key_part=True)


def _hand():
    return _estimator("hand", HAND, "handpose_model", strip_first_key_part=True)


def _face():
    return _estimator("face", FACE, "FaceNet", strip_first_key_part=False)


def _face_points(found, bgr: np.ndarray) -> list | None:
    util = _upstream("util")
    box = util.faceDetect(found, bgr)
    if box is None:
        return None
    x, y, size = box
    heatmaps = _face()(bgr[y : y + size, x : x + size, :])
    height, width = bgr.shape[:2]
    points = []
    for heatmap in heatmaps[:70]:  # channel 70 is the network's background, not a landmark
        above = heatmap > 0.05
        if not above.any():
            points.append(None)
            continue
        peak_y, peak_x = np.unravel_index(np.argmax(np.where(above, heatmap, -np.inf)), heatmap.shape)
        # A peak on the crop's first row/column is controlnet-aux's "not found" marker.
        points.append(None if peak_x == 0 or peak_y == 0 else ((peak_x + x) / width, (peak_y + y) / height))
    return points


def _hand_points(found, bgr: np.ndarray) -> tuple[list | None, list | None]:
    util = _upstream("util")
    height, width = bgr.shape[:2]
    hands: dict[bool, list] = {}
    for x, y, size, is_left in util.handDetect(found, bgr):
        peaks = _hand()(bgr[y : y + size, x : x + size, :])
        hands[is_left] = [None if px < 1e-6 or py < 1e-6 else ((px + x) / width, (py + y) / height)
                          for px, py in peaks]
    return hands.get(True), hands.get(False)


def detect_people(image: np.ndarray, *, hands: bool, face: bool, detect_resolution: int):
    """People found in an RGB ``uint8`` image; returns ``(people, detect_width, detect_height)``."""
    import torch

    height, width = image.shape[:2]
    det_w, det_h = detection_size(width, height, detect_resolution)
    bgr = np.ascontiguousarray(resize(image, det_w, det_h)[:, :, ::-1])  # the CMU networks read BGR
    body = _body()
    if hands:
        _hand()  # load every network before detecting: a missing file fails fast
    if face:
        _face()
    people = []
    with torch.no_grad():
        candidate, subset = body(bgr)
        for found in body.format_body_result(candidate, subset):
            person = Person(body=[None if k is None else (k.x / float(det_w), k.y / float(det_h))
                                  for k in found.keypoints])
            if hands:
                person.left_hand, person.right_hand = _hand_points(found, bgr)
            if face:
                person.face = _face_points(found, bgr)
            people.append(person)
    return people, det_w, det_h


def _runner(draw_body: bool, hands: bool, face: bool):
    def run(image: np.ndarray, mask: np.ndarray | None = None, *, detect_resolution: int):
        people, det_w, det_h = detect_people(image, hands=hands, face=face, detect_resolution=detect_resolution)
        height, width = image.shape[:2]
        return pose_result(people, width, height, line_scale_for(width, height, det_w, det_h),
                           body=draw_body, hands=hands, face=face)

    return run


@hookimpl
def ctrlgen_preprocessors():
    for name, (draw_body, hands, face, description) in VARIANTS.items():
        weights = (BODY,) + ((HAND,) if hands else ()) + ((FACE,) if face else ())
        yield PreprocessorSpec(
            name=name,
            run=_runner(draw_body, hands, face),
            params=(DETECT_RESOLUTION,),
            family="openpose",
            description=f"{description}; keypoints as OpenPose JSON in the result data",
            weights=weights,
            requires=("torch", "controlnet_aux", "cv2", "scipy", "skimage"),
            unload=unloader(OWNER),
        )


def cmd_render_pose(args) -> int:
    from pathlib import Path

    from PIL import Image

    from ctrlgen.core.errors import CtrlgenError

    try:
        text = Path(args.pose).read_text(encoding="utf-8")
    except OSError as exc:
        raise CtrlgenError(f"cannot read pose file {args.pose}: {exc.strerror}") from None
    image = render_openpose(text, args.width, args.height, body=not args.no_body, hands=not args.no_hands,
                            face=not args.no_face)
    Image.fromarray(image).save(args.output)
    print(f"wrote {args.output} ({image.shape[1]}×{image.shape[0]})")
    return 0


@hookimpl
def ctrlgen_cli_commands(subparsers):
    p = subparsers.add_parser("render-pose", help="draw an (edited) OpenPose JSON as an openpose control map")
    p.add_argument("pose", help="OpenPose JSON, as `ctrlgen preprocess openpose_full ... --json` prints in data")
    p.add_argument("output", help="output PNG")
    p.add_argument("--width", type=int, help="output width (default: the JSON's canvas_width)")
    p.add_argument("--height", type=int, help="output height (default: the JSON's canvas_height)")
    p.add_argument("--no-body", action="store_true", help="leave out the body")
    p.add_argument("--no-hands", action="store_true", help="leave out the hands")
    p.add_argument("--no-face", action="store_true", help="leave out the face")
    p.set_defaults(func=cmd_render_pose)
