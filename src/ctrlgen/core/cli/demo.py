"""``ctrlgen demo``: the whole slice on an embedded default, no GPU and no downloads.

Without arguments it builds a tiny random-weight SD1.5 model and ControlNet (once, into
the cache folder), puts them in an A1111-style model folder, and runs a canny-guided
ControlNet generation on the bundled sample photo through the real model store, engine
and diffusers pipelines. With ``--model``/``--controlnet`` it runs the same job on real
weights from your model folders.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctrlgen.core.config import cache_dir

TINY_NOTE = (
    "Note: the demo model is a tiny network with random weights, so the result is noise, not a "
    "picture: the control map does reach the network, but an untrained one cannot draw it.\nFor real images, point ctrlgen at your models "
    "(CTRLGEN_MODEL_ROOTS=/path/to/stable-diffusion-webui or /path/to/ComfyUI) and run:\n"
    "  ctrlgen demo --model <checkpoint name> --controlnet <canny ControlNet name>\n"
    "`ctrlgen models` lists the names it found."
)


def sample_photo_path() -> Path:
    return Path(__file__).resolve().parents[2] / "assets" / "sample.jpg"  # ctrlgen/assets


def tiny_model_root() -> tuple[Path, str, str]:
    """The demo's A1111-layout model folder with the tiny models (built on first use)."""
    from ctrlgen.testing.tiny import write_model_root

    root = cache_dir() / "demo-models"
    placed = write_model_root(root, layout="a1111")
    return placed.root, placed.checkpoint.stem, placed.controlnet.stem


def run_demo(out: Path, steps: int = 12, size: int = 256, device: str | None = None,
             model: str | None = None, controlnet: str | None = None, seed: int = 1234) -> dict[str, Path]:
    from PIL import Image

    from ctrlgen.core.cli.sheet import contact_sheet
    from ctrlgen.core.engine.engine import Engine
    from ctrlgen.core.engine.jobs import parse_job
    from ctrlgen.core.models.store import ModelStore
    from ctrlgen.core.plugins.specs import ModelRoot

    tiny = model is None
    if tiny:
        if controlnet is not None:
            from ctrlgen.core.errors import CtrlgenError

            raise CtrlgenError("--controlnet needs --model too (the tiny demo model has its own ControlNet)")
        print("Preparing the tiny demo model (first run only)...")
        root, model, controlnet = tiny_model_root()
        store = ModelStore([ModelRoot(root, layout="a1111")])
    else:
        store = ModelStore.from_settings()
        if controlnet is None:
            from ctrlgen.core.errors import CtrlgenError

            raise CtrlgenError("--model needs --controlnet too: the demo is a canny ControlNet generation")
    out.mkdir(parents=True, exist_ok=True)
    photo = sample_photo_path()
    job = parse_job({
        "model": model,
        "prompt": "portrait of an astronaut in a white spacesuit, studio photo",
        "negative_prompt": "blurry, low quality",
        "seed": seed,
        "steps": steps,
        "cfg_scale": 7.0,
        "sampler": "Euler a",
        "width": size,
        "height": size,
        "image": str(photo),
        "control": [{"model": controlnet, "preprocessor": "canny", "weight": 1.0,
                     "preprocessor_params": {"low_threshold": 100, "high_threshold": 200}}],
    })
    engine = Engine(store=store, device=device)
    from ctrlgen.core.cli.progress import progress_printer

    result = engine.run(job, on_event=progress_printer(quiet=False))
    source = np.asarray(Image.open(photo).convert("RGB"))
    paths = {
        "input": out / "input.png",
        "control": out / "control_canny.png",
    }
    Image.fromarray(source).save(paths["input"])
    Image.fromarray(result.control_maps[0]).save(paths["control"])
    (paths["result"],) = result.save(out, stem="result")
    sheet = contact_sheet(
        [("input", source), ("canny control map", result.control_maps[0]),
         (f"result (seed {result.seeds[0]})", np.asarray(result.images[0]))],
        cell=size, title=f"ctrlgen demo - model {Path(model).name}" + (" (tiny, random weights)" if tiny else ""),
    )
    paths["sheet"] = out / "contact_sheet.png"
    sheet.save(paths["sheet"])
    print(f"Wrote {paths['sheet']} (input, control map, result) and the single images to {out}/")
    if tiny:
        print(TINY_NOTE)
    return paths
