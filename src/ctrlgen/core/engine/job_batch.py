"""``ctrlgen batch JOBS.jsonl OUT_DIR``: one job per line, run by the shared batch runner.

Each line of the jobs file is a job (docs/jobs.md) with its images by path (relative paths are
read from the jobs file's folder) and, optionally, ``"name"``: the stem of its outputs in
``OUT_DIR`` (default: the line number, ``00001``), unique in the file, sub-folders allowed. A
job making one image writes ``NAME.png``; a ``batch_size`` of N writes ``NAME-00.png`` ...
Each PNG carries the job's parameters as ``ctrlgen generate`` writes them.

The manifest (``ctrlgen-batch.jsonl`` in ``OUT_DIR``) has one line per job: ``name``, ``line``,
``outputs``, ``outcome`` (``done`` or ``error`` with ``error``), ``seeds``, ``seconds`` and a
``fingerprint`` of the job, so a line whose job was edited is run again on resume.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ctrlgen.core.errors import CtrlgenError, JobError

MANIFEST_NAME = "ctrlgen-batch.jsonl"


@dataclass(frozen=True)
class JobItem:
    """One line of the jobs file: its job (validated, paths resolved) and its outputs."""

    name: str
    line: int
    job: dict[str, Any]
    outputs: tuple[Path, ...]
    fingerprint: str

    @property
    def key(self) -> str:  # the manifest's "name"
        return self.name


def image_count(job: Any) -> int:
    """How many images ``job`` makes: one per control unit for ``preprocess``, else its batch."""
    if job.task == "preprocess":
        return max(1, len(job.control))
    if job.task in ("fix", "upscale"):
        return 1
    return job.batch_size


def _check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise JobError(f"{where}: \"name\" must be a non-empty string (the outputs' file name without .png)")
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or name.startswith("~"):
        raise JobError(f"{where}: \"name\" {name!r} must stay inside OUT_DIR; give a plain name like 'portrait-3' "
                       "or a relative one like 'faces/portrait-3'")
    return path.as_posix()


def read_jobs(path: Path, out_dir: Path) -> list[JobItem]:
    """Every job of the jobs file, validated (the first problem is a :class:`JobError` naming the
    line), with where its outputs go."""
    from ctrlgen.core.engine.jobs import parse_job

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise JobError(f"cannot read the jobs file {path}: {exc.strerror or exc}") from None
    base = Path(path).resolve().parent
    items: list[JobItem] = []
    names: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise JobError(f"{where} is not JSON ({exc.msg} at column {exc.colno}); give one job object per line"
                           ) from None
        if not isinstance(data, dict):
            raise JobError(f"{where} holds a {type(data).__name__}; give one job object per line")
        name = _check_name(data.pop("name"), where) if "name" in data else f"{number:05d}"
        if name in names:
            raise JobError(f"{where}: the name {name!r} is taken by line {names[name]}; give each job its own name")
        names[name] = number
        try:
            job = parse_job(data).resolve_paths(base)
        except CtrlgenError as exc:
            raise JobError(f"{where}: {exc}") from None
        fields = job.model_dump(mode="json")
        count = image_count(job)
        outputs = ((out_dir / f"{name}.png",) if count == 1
                   else tuple(out_dir / f"{name}-{index:02d}.png" for index in range(count)))
        fingerprint = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
        items.append(JobItem(name, number, fields, outputs, fingerprint))
    if not items:
        raise JobError(f"{path} holds no jobs; give one job object (docs/jobs.md) per line")
    return items


def check_jobs(engine: Any, items: list[JobItem]) -> list[str]:
    """:meth:`Engine.check` for each job (models, plugins, params, images: everything that
    needs no weights), the first problem naming its line; returns the files the jobs read
    (model files and images), which every Ray node must see."""
    from ctrlgen.core.engine.jobs import parse_job

    paths: dict[str, None] = {str(root.path): None for root in engine.store.roots}
    for item in items:
        job = parse_job(item.job)
        try:
            checked = engine.check(job)
        except CtrlgenError as exc:
            exc.args = (f"line {item.line} ({item.name}): {exc}",)
            raise exc.with_traceback(None) from None
        if getattr(checked, "checkpoint", None) is not None:
            paths[str(checked.checkpoint.path)] = None
        for unit in getattr(checked, "units", ()):
            if unit.model_entry is not None:
                paths[str(unit.model_entry.path)] = None
        for ref in _image_refs(job):
            paths[ref] = None
    return list(paths)


def _image_refs(job: Any) -> list[str]:
    refs = [job.image, job.mask] + [unit.image for unit in job.control]
    return [ref for ref in refs if isinstance(ref, str)]


@dataclass
class JobWork:
    """The runner's work for ``ctrlgen batch`` (:class:`ctrlgen.core.engine.runner.Work`)."""

    def record(self, item: JobItem) -> dict[str, Any]:
        return {"name": item.name, "line": item.line, "outputs": [str(p) for p in item.outputs],
                "fingerprint": item.fingerprint}

    def failed(self, item: JobItem, error: str) -> dict[str, Any]:
        return {"outcome": "error", "error": error, "seeds": []}

    def load(self, item: JobItem) -> tuple[Any, dict[str, Any]]:
        """The job and its image and mask, decoded ahead of the engine."""
        from ctrlgen.core.engine.engine import load_image_file
        from ctrlgen.core.engine.jobs import parse_job

        job = parse_job(item.job)
        pixels = {ref: load_image_file(ref, what) for ref, what in ((job.image, "job.image"), (job.mask, "job.mask"))
                  if isinstance(ref, str)}
        return job, pixels

    def run(self, engine: Any, item: JobItem, loaded: tuple[Any, dict[str, Any]],
            cancel: Any) -> tuple[dict[str, Any], Any]:
        from ctrlgen.core.engine.engine import load_image_file

        job, pixels = loaded
        result = engine.run(job, images=lambda ref, what: pixels[ref] if ref in pixels else load_image_file(ref, what),
                            cancel=cancel)
        if len(result.images) != len(item.outputs):
            raise JobError(f"the job made {len(result.images)} images where {len(item.outputs)} were expected")
        return {"outcome": "done", "seeds": list(result.seeds)}, result

    def encode(self, item: JobItem, loaded: Any, result: Any, record: dict[str, Any]) -> list[bytes]:
        """Each image as a PNG with A1111's ``parameters`` and the job as ``ctrlgen-job``."""
        from PIL.PngImagePlugin import PngInfo

        blobs = []
        for index, image in enumerate(result.images):
            info = PngInfo()
            if index < len(result.infotexts):
                info.add_text("parameters", result.infotexts[index])
            job_json = result.job.model_dump(mode="json")
            job_json["seed"] = result.seeds[index] if index < len(result.seeds) else job_json.get("seed")
            info.add_text("ctrlgen-job", json.dumps(job_json, sort_keys=True))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", pnginfo=info)
            blobs.append(buffer.getvalue())
        return blobs


__all__ = ["MANIFEST_NAME", "JobItem", "JobWork", "check_jobs", "image_count", "read_jobs"]
