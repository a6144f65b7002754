"""Fix passes over many files (``ctrlgen fix``): inputs, outputs, the manifest, resume.

One image at a time goes through the engine (a ``fix`` job, :mod:`ctrlgen.core.engine.detail`)
while a small thread pool decodes the next images and a writer thread encodes the previous
one, so the device never waits for the disk. The order on disk is what makes any interruption
(``kill -9`` included) safe:

1. the output is written under a hidden partial name (``.NAME.ctrlgen-partial``) beside its
   final path, then renamed into place (``os.replace``: atomic); a partial file never has the
   final name;
2. only then is the image's line appended to the manifest (JSONL, one line per image: its
   detections, seeds and outcome);
3. on start, a trailing incomplete manifest line is cut off, leftover partial files are
   removed, and images whose output exists and whose manifest line is complete are skipped;
   an image killed between 1 and 2 is fixed again (the same seed gives the same pixels).

A file that cannot be read as an image gets a manifest line with ``outcome: "error"`` and is
skipped; it is not tried again on resume.
"""

from __future__ import annotations

import concurrent.futures
import glob
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ctrlgen.core.errors import CtrlgenError, JobError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
PARTIAL_SUFFIX = ".ctrlgen-partial"
MANIFEST_NAME = "ctrlgen-fix.jsonl"
DEFAULT_SUFFIX = "-fixed"
FIX_TEXT_KEY = "ctrlgen-fix"  # the PNG text chunk (JPEG/WebP: the comment) with the fix's parameters


# -- inputs and outputs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchItem:
    """One input file and where its fixed copy goes."""

    source: Path
    output: Path


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


def partial_path(output: Path) -> Path:
    """The hidden name an output is written under before it is renamed into place."""
    return output.with_name(f".{output.name}{PARTIAL_SUFFIX}")


def _is_partial(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(PARTIAL_SUFFIX)


# -- the manifest -----------------------------------------------------------------------------------


class Manifest:
    """The JSONL record of a batch: one complete line per image, appended after its output is in
    place. Opening it cuts off an incomplete last line (the writer was killed mid-line)."""

    def __init__(self, path: Path):
        self.path = path
        self.records: dict[str, dict[str, Any]] = {}
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            data = path.read_bytes()
            keep = data.rfind(b"\n") + 1
            if keep != len(data):
                with open(path, "r+b") as handle:
                    handle.truncate(keep)
            for number, line in enumerate(data[:keep].splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    record = None
                if not isinstance(record, dict) or "input" not in record:
                    raise JobError(f"manifest {path} line {number} is not a ctrlgen fix record; give another "
                                   "--manifest, or move the file away to start the batch afresh")
                self.records[record["input"]] = record
        self._handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def done(self, item: BatchItem) -> bool:
        """Whether ``item`` needs no more work: its line is there and (unless it was a bad file)
        its output too."""
        record = self.records.get(str(item.source))
        if record is None:
            return False
        return record.get("outcome") == "error" or item.output.exists()

    def append(self, record: dict[str, Any]) -> None:
        self._handle.write(json.dumps(record, sort_keys=True) + "\n")
        self._handle.flush()
        self.records[record["input"]] = record

    def close(self) -> None:
        self._handle.close()


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


def encode(image: Any, decoded: Decoded, output: Path, fix_parameters: dict[str, Any]) -> None:
    """Write ``image`` to ``output`` atomically (partial name, then rename) in the format its
    extension names, keeping the input's PNG text chunks and EXIF and adding the fix's parameters."""
    from PIL.PngImagePlugin import PngInfo

    output.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(output)
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
    try:
        with open(partial, "wb") as handle:
            image.save(handle, format=fmt, **options)
        os.replace(partial, output)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise CtrlgenError(f"cannot write {output}: {exc.strerror or exc}; check the free space and permissions "
                           f"of {output.parent} (running the command again resumes)") from None


# -- the batch ---------------------------------------------------------------------------------------


@dataclass
class BatchOptions:
    """What every image's ``fix`` job gets: the passes and the job fields (model, prompt, steps...)."""

    passes: list[dict[str, Any]]
    job: dict[str, Any]
    workers: int = 2  # decode/encode threads beside the engine


def check_batch(engine: Any, options: BatchOptions) -> None:
    """Everything about the jobs that needs no weights and no input (model, detectors, params),
    checked once before the batch starts, on a stand-in image."""
    from ctrlgen.core.engine.jobs import parse_job

    if not options.passes:
        raise JobError("no fix passes: give --faces, --hands or --passes FILE.json")
    stand_in = np.zeros((64, 64, 3), np.uint8)
    job = parse_job({**options.job, "task": "fix", "image": "ctrlgen-batch:check", "detail": options.passes})
    engine.check(job, lambda ref, what: stand_in)


def fix_parameters(options: BatchOptions, record: dict[str, Any]) -> dict[str, Any]:
    return {**{k: v for k, v in options.job.items() if v is not None}, "seed": record["seed"],
            "detail": options.passes, "source": Path(record["input"]).name}


def run_batch(engine: Any, items: list[BatchItem], options: BatchOptions, manifest: Manifest,
              on_record: Callable[[dict[str, Any]], None] | None = None,
              cancel: Any = None) -> list[dict[str, Any]]:
    """Fix each item not yet done; returns the new manifest records in input order.
    ``on_record`` is called (on the writer thread) after each line is written."""
    from ctrlgen.core.engine.scripting import fix

    # 1. Clean up what a killed run left: partial files beside the outputs.
    for item in items:
        partial = partial_path(item.output)
        if partial.exists():
            partial.unlink()
    pending = [item for item in items if not manifest.done(item)]
    records: list[dict[str, Any]] = []

    def write(item: BatchItem, decoded: Decoded, result: Any, record: dict[str, Any]) -> None:
        if result is not None:
            encode(result.images[0], decoded, item.output, fix_parameters(options, record))
        manifest.append(record)  # after the rename: a complete line means the output is in place
        records.append(record)
        if on_record is not None:
            on_record(record)

    # 2. Decode ahead on a small pool, write behind on one thread (lines stay in order).
    readers = concurrent.futures.ThreadPoolExecutor(max(1, options.workers), thread_name_prefix="ctrlgen-decode")
    writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ctrlgen-encode")
    ahead = max(2, options.workers + 1)
    try:
        decoding = _prefetch(readers, pending, ahead)
        writes: list[concurrent.futures.Future] = []
        for item, future in decoding:
            if cancel is not None and cancel.is_set():
                break
            record: dict[str, Any] = {"input": str(item.source), "output": str(item.output)}
            started = time.perf_counter()
            try:
                decoded = future.result()
            except CtrlgenError as exc:
                record.update(outcome="error", error=str(exc), seed=None, detail=[])
                writes.append(writer.submit(write, item, None, None, record))
                continue
            # 3. The fix itself, on this thread: the engine (and the device) stays busy.
            try:
                result = fix(decoded.pixels, options.passes, engine=engine, cancel=cancel, **options.job)
            except JobError as exc:  # something about this image (its size, its pixels)
                record.update(outcome="error", error=str(exc), seed=None, detail=[])
                writes.append(writer.submit(write, item, None, None, record))
                continue
            detail = result.data[0]["detail"]
            repainted = sum(len(p["repainted"]) for p in detail)
            record.update(outcome="fixed" if repainted else "nothing found", seed=result.seeds[0], detail=detail,
                          seconds=round(time.perf_counter() - started, 3))
            writes.append(writer.submit(write, item, decoded, result, record))
            writes = _settle(writes, limit=ahead)
        for pending_write in writes:
            pending_write.result()
    finally:
        readers.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True)
    return records


def _settle(writes: list[concurrent.futures.Future], limit: int) -> list[concurrent.futures.Future]:
    """The writes still running; a finished one's error is raised here, and past ``limit``
    queued writes the oldest is waited for (memory stays bounded when the disk is slow)."""
    while len(writes) > limit:
        writes.pop(0).result()
    running = []
    for future in writes:
        if future.done():
            future.result()
        else:
            running.append(future)
    return running


def _prefetch(pool: concurrent.futures.Executor, items: list[BatchItem],
              ahead: int) -> Iterator[tuple[BatchItem, concurrent.futures.Future]]:
    """``(item, future of its Decoded)`` in order, keeping ``ahead`` decodes in flight."""
    futures: list[concurrent.futures.Future] = []
    for index, item in enumerate(items):
        while len(futures) < min(ahead, len(items) - index):
            futures.append(pool.submit(decode, items[index + len(futures)].source))
        yield item, futures.pop(0)


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


__all__ = ["BatchItem", "BatchOptions", "Decoded", "Manifest", "check_batch", "collect_inputs", "decode", "encode",
           "partial_path", "plan_image", "plan_outputs", "run_batch"]
