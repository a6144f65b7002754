"""Preprocessor overhead: ctrlgen's call against calling OpenCV / controlnet-aux / mediapipe
directly on the same image, at 512² and 2048²; and each preprocessor's second call (model
cached) against its first (cold: the model or detector is built).

    python benchmarks/bench_preprocessors.py [--repeat N] [--sizes 512,2048] [--json out.json]

Target: ratio ≤ 1.10 (ctrlgen adds input normalisation, param validation and the
output contract; the detector work is the same).
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _timing import paired_medians, report  # noqa: E402


def photo(size: int):
    import numpy as np
    from PIL import Image
    from skimage import data

    return np.asarray(Image.fromarray(data.astronaut()).resize((size, size), Image.Resampling.BICUBIC))


def direct_canny(image):
    import cv2

    # What a caller of OpenCV needs for a ControlNet map: the edges as an RGB image.
    return cv2.cvtColor(cv2.Canny(image, 100, 200), cv2.COLOR_GRAY2RGB)


def direct_lsd(image):
    import cv2
    import numpy as np

    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    lines = cv2.createLineSegmentDetector().detect(grey)[0]
    canvas = np.zeros(grey.shape, np.uint8)
    for x0, y0, x1, y1 in (lines.reshape(-1, 4) if lines is not None else []):
        cv2.line(canvas, (int(x0), int(y0)), (int(x1), int(y1)), 255, 1)
    return cv2.cvtColor(canvas, cv2.COLOR_GRAY2RGB)


def make_direct_lineart():
    from controlnet_aux.lineart_standard import LineartStandardDetector

    detector = LineartStandardDetector()

    def run(image):
        side = min(image.shape[:2])
        return detector(image, detect_resolution=side, output_type="np")

    return run


def make_direct_mediapipe():
    from mediapipe.python.solutions import face_mesh, hands, pose

    models = (pose.Pose(static_image_mode=True, model_complexity=1),
              hands.Hands(static_image_mode=True, max_num_hands=2),
              face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=True))

    def run(image):
        return [model.process(image) for model in models]

    return run


def make_direct_face_mesh():
    from mediapipe.python.solutions import face_mesh

    model = face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=True,
                               min_detection_confidence=0.5)

    def run(image):
        return model.process(image)

    return run


CASES = [
    # (preprocessor, params for ctrlgen, direct-call factory)
    ("canny", {}, lambda: direct_canny),
    ("mlsd_lsd", {"detect_resolution": 0}, lambda: direct_lsd),
    ("lineart_standard", {"detect_resolution": 0}, make_direct_lineart),
    # one person: the same Pose + Hands + FaceMesh calls the direct baseline makes
    ("mediapipe_openpose", {"detect_resolution": 0, "max_people": 1}, make_direct_mediapipe),
    # the default (up to 6 people: the face detector on the image and its tiles finds the others)
    # against the same single-person calls: what the search for more people costs
    ("mediapipe_openpose", {"detect_resolution": 0}, make_direct_mediapipe),
    # the face mesh drawn at the input's size against the FaceMesh call it wraps
    ("mediapipe_face", {"detect_resolution": 0}, make_direct_face_mesh),
]


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sizes", default="512,2048")
    parser.add_argument("--only", help="comma-separated preprocessor names")
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    from ctrlgen.core.engine.preprocess import preprocess, unload

    wanted = set(args.only.split(",")) if args.only else None
    rows = []
    for name, params, factory in CASES:
        if wanted and name not in wanted:
            continue
        direct = factory()
        for size in [int(s) for s in args.sizes.split(",")]:
            image = photo(size)
            unload(name)
            start = time.perf_counter()
            preprocess(name, image, **params)
            first = time.perf_counter() - start
            second, baseline = paired_medians(partial(preprocess, name, image, **params), partial(direct, image),
                                              repeat=args.repeat)
            rows.append({"preprocessor": name, "params": ",".join(f"{k}={v}" for k, v in params.items()) or "-",
                         "size": f"{size}²", "ctrlgen_s": second, "direct_s": baseline,
                         "ratio": second / baseline, "first_call_s": first, "second/first": second / first})
    report("Preprocessors (median seconds; ratio = ctrlgen / direct call, target <= 1.10)", rows, args.json)
    return rows


if __name__ == "__main__":
    main()
