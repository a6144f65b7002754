"""Assemble docs/preprocessors.md from docs/preprocessors.d/*.md and real pictures.

Runs every registered preprocessor with its defaults on the bundled sample photo and saves
a picture of each output that could run on this machine (docs/images/preprocessors/), plus
the whole contact sheet. Pictures are inserted under each preprocessor's heading. Run it
after adding or changing a preprocessor:

    .venv/bin/python scripts/build_preprocessor_docs.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
FRAGMENTS = ["canny.md", "depth_normal.md", "pose.md", "lines.md", "segmentation_face_simple.md"]
PICTURES = DOCS / "images" / "preprocessors"

INTRO = """# Preprocessors

A preprocessor turns a picture into a control map for a ControlNet (edges, depth, pose,
segments, ...). Every one is a plugin registered through `ctrlgen_preprocessors` and
follows one contract (tested for each by `ctrlgen.testing.contracts.PreprocessorContract`):

- **Input**: RGB, RGBA (composited on white), greyscale, 16-bit or float images, as numpy
  arrays or PIL images. Empty images and sides above 16384 px are refused with a clear error.
- **Output**: a `uint8` H×W×3 map **at the input's size**, whatever size the detector ran
  at, plus structured data where there is some (OpenPose JSON, segment labels, face boxes,
  line segments) in `result.data`.
- **Params** are declared as data (type, default, range, description): `ctrlgen plugins
  --all --json` lists them; a bad value is refused before anything runs, naming the param.
- **`detect_resolution`**: the short side the detector runs at (sides rounded to multiples
  of 64); the map is resized back. In jobs, `pixel_perfect: true` sets it so that one
  detector pixel lands on one generated pixel, and `resize_mode` (`just_resize`,
  `crop_and_resize`, `resize_and_fill`) fits the map to the generation size — shared
  helpers in `ctrlgen.core.images`, as sd-webui-controlnet defines them.
- **Weights** come from the model store (see [models.md](models.md)) under their usual file
  names; nothing downloads by itself. A missing file is an error naming the file, the
  folders searched and where to get it (`ctrlgen models pull REPO FILE` fetches one file into
  the Hugging Face cache). Loaded once, kept, and freed by `ctrlgen.core.engine.preprocess.unload(name)`.

From Python:

```python
import ctrlgen

result = ctrlgen.preprocess("canny", image, low_threshold=50)   # result.image, result.data
```

From the command line:

```console
$ ctrlgen preprocess canny photo.png edges.png --param low_threshold=50
$ ctrlgen preprocess openpose_full photo.png pose.png --json      # prints the keypoints
$ ctrlgen preprocess --sheet photo.png sheet.png                  # every preprocessor that runs here
```

The pictures below were made by `scripts/build_preprocessor_docs.py` from the sample photo
on a machine without the optional weight files, so only the preprocessors that need no
download have one; the others are tested there on random weights in the real file formats.

![contact sheet](images/preprocessor_sheet.jpg)
"""


def main() -> int:
    import numpy as np
    from PIL import Image

    from ctrlgen.core.cli.demo import sample_photo_path
    from ctrlgen.core.cli.sheet import preprocessor_sheet
    from ctrlgen.core.plugins.manager import get_registry

    photo = np.asarray(Image.open(sample_photo_path()).convert("RGB").resize((384, 384)))
    names = get_registry("preprocessors").names()
    sheet, ran, skipped = preprocessor_sheet(photo, cell=160)
    (DOCS / "images").mkdir(exist_ok=True)
    PICTURES.mkdir(parents=True, exist_ok=True)
    sheet.convert("RGB").save(DOCS / "images" / "preprocessor_sheet.jpg", quality=82)
    from ctrlgen.core.engine.preprocess import preprocess

    for old in PICTURES.glob("*.jpg"):
        old.unlink()
    yy, xx = np.mgrid[0:384, 0:384]
    mask = ((((xx - 192) / 96) ** 2 + ((yy - 192) / 96) ** 2) <= 1).astype(np.uint8) * 255
    from ctrlgen.core.cli.sheet import OFFLINE_ALTERNATIVES

    for name in ran:
        try:
            image = Image.fromarray(preprocess(name, photo, mask=mask).image)
        except Exception:
            image = Image.fromarray(preprocess(name, photo, mask=mask, **OFFLINE_ALTERNATIVES[name]).image)
        image.thumbnail((192, 192))
        image.convert("RGB").save(PICTURES / f"{_file(name)}.jpg", quality=82)

    text = INTRO
    for fragment in FRAGMENTS:
        body = (DOCS / "preprocessors.d" / fragment).read_text(encoding="utf-8")
        text += "\n" + _with_pictures(body, ran, skipped)
    missing = [n for n in names if not re.search(rf"(?<![\w+]){re.escape(n)}(?![\w+])", text)]
    if missing:
        print(f"not documented: {', '.join(missing)}", file=sys.stderr)
        return 1
    (DOCS / "preprocessors.md").write_text(text, encoding="utf-8")
    print(f"wrote docs/preprocessors.md ({len(ran)} pictures; {len(skipped)} need weights)")
    return 0


def _file(name: str) -> str:
    return name.replace("+", "_plus_")


def _with_pictures(body: str, ran: list[str], skipped: dict[str, str]) -> str:
    out = []
    for line in body.splitlines():
        out.append(line)
        heading = re.match(r"^### (.+)$", line)
        if not heading:
            continue
        names = [n.strip(" `") for n in heading.group(1).split(",")]
        shown = [n for n in names if n in ran]
        if shown:
            out.append("")
            out.append(" ".join(f"![{n}](images/preprocessors/{_file(n)}.jpg)" for n in shown))
        absent = [n for n in names if n in skipped]
        if absent:
            out.append("")
            out.append(f"*No picture for {', '.join(absent)}: needs weight files that were not present "
                       "when these docs were built.*")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
