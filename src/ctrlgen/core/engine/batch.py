"""Fix passes over many files (``ctrlgen fix``): inputs, outputs, decode/encode, the fix work.

What each image goes through is :class:`FixWork`: decode (on a reader thread), a ``fix`` job
on an engine (:mod:`ctrlgen.core.engine.detail`), encode keeping the input's PNG text, EXIF and
ICC profile. Everything else — the manifest, resume after ``kill -9``, atomic outputs,
decode/encode overlapped with the engine, several devices, Ray — is the batch runner that
``ctrlgen batch`` shares (:mod:`ctrlgen.core.engine.runner`).

A file that cannot be read as an image gets a manifest line with ``outcome: "error"`` and is
skipped; it is not tried again on resume.
"""

from __future__ import annotations

import glob
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ctrlgen.core.engine.runner import (
    PARTIAL_SUFFIX,
    Manifest,
    RunnerOptions,
    partial_path,
    run_items,
    write_atomic,
)
from ctrlgen.core.errors import CtrlgenError, JobError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MANIFEST_NAME = "ctrlgen-fix.jsonl"
DEFAULT_SUFFIX = "-fixed"
FIX_TEXT_KEY = "ctrlgen-fix"  # the PNG text chunk (JPEG/WebP: the comment) with the fix's parameters


# -- inputs and outputs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchItem:
    """One input file and where its fixed copy goes."""

    source: Path
    output: Path

    @property
    def key(self) -> str:  # the manifest's "input"
        return str(self.source)

    @property
    def outputs(self) -> tuple[Path, ...]:
        return (self.output,)


def collect_inputs(patterns: list[str], recursive: bool = False) -> list[tuple[Path, Path]]:
    """``(file, relative name)`` for each file, folder (its images; with ``recursive`` its
    sub-folders' too) and glob (``**`` reaches into sub-folders) in ``patterns``, each file once,
    in sorted order. The relative name is what an ``--out`` folder repeats."""
    found: dict[Path, Path] = {}
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            walk = path.rglob("*") if recursive else path.iterdir()
            for file in sorted(walk):
                if file.is_file() and file.suffix.lower() in IMAGE_EXTENSIONS and not _is_partial(file):
                    found.setdefault(file.resolve(), file.relative_to(path))
        elif path.is_file():
            found.setdefault(path.resolve(), Path(path.name))
        elif glob.has_magic(pattern):
            matches = sorted(Path(m) for m in glob.glob(pattern, recursive=True))
            for file in matches:
                if file.is_file() and not _is_partial(file):
                    found.setdefault(file.resolve(), Path(file.name))
            if not matches:
                raise JobError(f"{pattern!r} matches no file; check the pattern (quote it so the shell leaves it "
                               "to ctrlgen, and use ** for sub-folders)")
        else:
            raise JobError(f"{pattern!r} is neither a file, a folder nor a glob that matches; give image files, "
                           "folders or patterns like 'photos/*.png'")
    return sorted(found.items())


def plan_outputs(inputs: list[tuple[Path, Path]], out_dir: Path | None = None, suffix: str | None = None,
                 overwrite: bool = False) -> list[BatchItem]:
    """Where each input's fixed copy goes: ``out_dir/relative name`` (with ``suffix`` before the
    extension when given), or beside the original with ``suffix`` (default ``-fixed``). An
    output that would replace an input file is refused unless ``overwrite``; outputs of a
    suffixed earlier run found among the inputs are dropped (they are not fixed again)."""
    if out_dir is None and suffix is None:
        suffix = "" if overwrite else DEFAULT_SUFFIX
    suffix = suffix or ""
    sources = {source for source, _ in inputs}
    if suffix and out_dir is None:  # an earlier run's outputs beside their originals are no inputs
        inputs = [(source, relative) for source, relative in inputs
                  if not (source.stem.endswith(suffix)
                          and source.with_name(source.stem[: -len(suffix)] + source.suffix) in sources)]
        sources = {source for source, _ in inputs}
    items: list[BatchItem] = []
    taken: dict[Path, Path] = {}
    for source, relative in inputs:
        target = (out_dir.resolve() / relative) if out_dir is not None else source
        extension = target.suffix if target.suffix.lower() in IMAGE_EXTENSIONS else ".png"  # GIF, ... -> PNG
        target = target.with_name(target.stem + suffix + extension)
        if target in sources and not overwrite:
            raise JobError(f"the output for {source} would replace the original {target}; give --out DIR or "
                           "--suffix TEXT, or --overwrite to replace originals")
        if target in taken:
            raise JobError(f"{taken[target]} and {source} would both be written to {target}; fix them in separate "
                           "runs or give --suffix")
        taken[target] = source
        items.append(BatchItem(source, target))
    return items


def _is_partial(path: Path) -> bool:
    from ctrlgen.core.engine.runner import is_partial

    return is_partial(path)


# -- reading and writing one image ------------------------------------------------------------------


@dataclass
class Decoded:
    """An input's pixels and what its output keeps: the format, PNG text chunks, EXIF."""

    pixels: np.ndarray
    format: str
    text: dict[str, str] = field(default_factory=dict)
    exif: bytes | None = None
    icc_profile: bytes | None = None


def decode(path: Path) -> Decoded:
    """Read ``path`` (errors are :class:`JobError` naming the file)."""
    from PIL import Image

    from ctrlgen.core.engine.engine import load_image_file

    pixels = load_image_file(str(path), str(path))
    with Image.open(path) as image:
        text = {k: v for k, v in getattr(image, "text", {}).items() if isinstance(v, str)}
        return Decoded(pixels, image.format or "PNG", text, image.info.get("exif"), image.info.get("icc_profile"))


def encode_bytes(image: Any, decoded: Decoded, output: Path, fix_parameters: dict[str, Any]) -> bytes:
    """``image`` encoded in the format ``output``'s extension names, keeping the input's PNG
    text chunks, EXIF and ICC profile and adding the fix's parameters."""
    from PIL.PngImagePlugin import PngInfo

    fix_text = json.dumps(fix_parameters, sort_keys=True)
    options: dict[str, Any] = {}
    if decoded.exif:
        options["exif"] = decoded.exif
    if decoded.icc_profile:
        options["icc_profile"] = decoded.icc_profile
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF",
           ".tiff": "TIFF"}.get(output.suffix.lower(), "PNG")
    if fmt == "JPEG":
        image = image.convert("RGB")
        options.update(quality=95, comment=fix_text.encode())
    elif fmt == "WEBP":
        options.update(quality=95)
    elif fmt == "BMP":
        image = image.convert("RGB")
        options.clear()
    elif fmt == "PNG":
        info = PngInfo()
        for key, value in decoded.text.items():
            if key != FIX_TEXT_KEY:
                info.add_text(key, value)
        info.add_text(FIX_TEXT_KEY, fix_text)
        options["pnginfo"] = info
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=fmt, **options)
    except OSError as exc:
        raise CtrlgenError(f"cannot write {output}: {exc.strerror or exc}; check the free space and permissions "
                           f"of {output.parent} (running the command again resumes)") from None
    return buffer.getvalue()


def encode(image: Any, decoded: Decoded, output: Path, fix_parameters: dict[str, Any]) -> None:
    """Write ``image`` to ``output`` atomically (partial name, then rename); see :func:`encode_bytes`."""
    write_atomic(output, encode_bytes(image, decoded, output, fix_parameters))


# -- the batch ---------------------------------------------------------------------------------------


@dataclass
class BatchOptions:
    """What every image's ``fix`` job gets: the passes and the job fields (model, prompt, steps...)."""

    passes: list[dict[str, Any]]
    job: dict[str, Any]
    workers: int = 2  # decode/encode threads beside each engine


def check_batch(engine: Any, options: BatchOptions) -> Any:
    """Everything about the jobs that needs no weights and no input (model, detectors, params),
    checked once before the batch starts, on a stand-in image; returns the checked job."""
    from ctrlgen.core.engine.jobs import parse_job

    if not options.passes:
        raise JobError("no fix passes: give --faces, --hands or --passes FILE.json")
    stand_in = np.zeros((64, 64, 3), np.uint8)
    job = parse_job({**options.job, "task": "fix", "image": "ctrlgen-batch:check", "detail": options.passes})
    return engine.check(job, lambda ref, what: stand_in)


def fix_parameters(options: BatchOptions, record: dict[str, Any]) -> dict[str, Any]:
    return {**{k: v for k, v in options.job.items() if v is not None}, "seed": record["seed"],
            "detail": options.passes, "source": Path(record["input"]).name}


@dataclass
class FixWork:
    """The runner's work for ``ctrlgen fix`` (:class:`ctrlgen.core.engine.runner.Work`): decode,
    a ``fix`` job, encode beside or apart from the original."""

    options: BatchOptions

    def record(self, item: BatchItem) -> dict[str, Any]:
        return {"input": str(item.source), "output": str(item.output)}

    def failed(self, item: BatchItem, error: str) -> dict[str, Any]:
        return {"outcome": "error", "error": error, "seed": None, "detail": []}

    def load(self, item: BatchItem) -> Decoded:
        return decode(item.source)

    def run(self, engine: Any, item: BatchItem, loaded: Decoded, cancel: Any) -> tuple[dict[str, Any], Any]:
        from ctrlgen.core.engine import scripting

        result = scripting.fix(loaded.pixels, self.options.passes, engine=engine, cancel=cancel, **self.options.job)
        detail = result.data[0]["detail"]
        repainted = sum(len(p["repainted"]) for p in detail)
        return {"outcome": "fixed" if repainted else "nothing found", "seed": result.seeds[0], "detail": detail}, result

    def encode(self, item: BatchItem, loaded: Decoded, result: Any, record: dict[str, Any]) -> list[bytes]:
        return [encode_bytes(result.images[0], loaded, item.output, fix_parameters(self.options, record))]


def run_batch(engine: Any, items: list[BatchItem], options: BatchOptions, manifest: Manifest,
              on_record: Callable[[dict[str, Any]], None] | None = None, cancel: Any = None,
              runner: RunnerOptions | None = None, make_engine: Callable[[str], Any] | None = None,
              node_paths: list[str] | tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Fix each item not yet done; returns the new manifest records in the order they were
    written. ``on_record`` is called after each line is written. ``runner`` says where the
    engines are (default: ``engine`` here; see :class:`~ctrlgen.core.engine.runner.RunnerOptions`)."""
    runner = runner or RunnerOptions(io_threads=options.workers)
    return run_items(FixWork(options), items, manifest, engine=engine, make_engine=make_engine, options=runner,
                     on_record=on_record, cancel=cancel, node_paths=node_paths)


# -- what would be fixed (--dry-run) ----------------------------------------------------------------


def plan_image(pixels: np.ndarray, passes: list[dict[str, Any]]) -> list[tuple[list[Any], list[np.ndarray]]]:
    """Per pass: the detections that would be repainted and their masks (after every mask
    option), as the passes see ``pixels`` unchanged."""
    from ctrlgen.core.engine import detail
    from ctrlgen.core.engine.jobs import DetailPass
    from ctrlgen.core.images import to_rgb

    rgb = to_rgb(pixels, "image")
    height, width = rgb.shape[:2]
    planned = []
    for index, fields in enumerate(passes):
        detail_pass = DetailPass(**fields)
        found = detail.detect(detail_pass, rgb, f"detail[{index}]")
        chosen = detail.select(found, detail_pass, (width, height))
        planned.append((chosen, detail.build_masks(chosen, detail_pass, (height, width))))
    return planned


__all__ = ["PARTIAL_SUFFIX", "BatchItem", "BatchOptions", "Decoded", "FixWork", "Manifest", "check_batch",
           "collect_inputs", "decode", "encode", "encode_bytes", "partial_path", "plan_image", "plan_outputs",
           "run_batch"]
