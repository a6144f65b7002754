"""The bodies of the bridge protocol: requests, answers and event payloads.

They make the server's OpenAPI document (:mod:`.openapi`), and the routes answer through the
answer models, so what the server sends is what the document declares. A job is validated
with :class:`ctrlgen.core.engine.jobs.Job` itself (through ``parse_job``, for its messages with
field paths); the document carries that model's schema.
"""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from ctrlgen.core.engine.jobs import Job, Task

REF_PATTERN = r"^sha256:[0-9a-f]{64}$"
Ref = Field(pattern=REF_PATTERN, description="an upload: 'sha256:' + the sha256 of its body")

JobStatus = Literal["queued", "running", "finished", "error", "cancelled", "interrupted"]
JobErrorCode = Literal["invalid_job", "model_not_found", "out_of_memory", "internal_error"]


def _job_object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PydanticCustomError("dict_type", "Input should be a valid dictionary")
    return value


# The job as the client sent it, an object: the route validates it with parse_job (messages
# with field paths, text checks), and the document shows the Job model that parse_job applies.
JobBody = Annotated[dict[str, Any], PlainValidator(_job_object, json_schema_input_type=Job)]


def _absent_unless(description: str) -> Any:
    """A field that is left out of the answer (not null) until it applies."""
    return Field(default=None, description=description, json_schema_extra=lambda schema: schema.pop("default"))


# -- requests ------------------------------------------------------------------------------------
class SubmitRequest(BaseModel):
    """``POST /v1/jobs``: a job (docs/jobs.md) whose image fields are upload references."""

    model_config = ConfigDict(extra="forbid")

    job: JobBody = Field(description="the job, as in docs/jobs.md; its images (image, mask, control[i].image, "
                         "adapter images) are upload references 'sha256:<hex>'")
    preview: bool = Field(default=False, description="send preview events (small PNGs) while denoising")


class PreprocessRequest(BaseModel):
    """``POST /v1/preprocess``: run one preprocessor on an uploaded image."""

    model_config = ConfigDict(extra="forbid")

    preprocessor: str = Field(description="a name from /v1/capabilities' preprocessors")
    image: str = Ref
    mask: str | None = Field(default=None, pattern=REF_PATTERN)
    params: dict[str, Any] = Field(default_factory=dict, description="the preprocessor's params")
    format: Literal["raw", "png", "webp"] = "raw"


# -- answers -------------------------------------------------------------------------------------
class ErrorBody(BaseModel):
    code: str = Field(description="snake_case, one of the codes in docs/protocol.md#errors")
    message: str = Field(description="what was wrong and how to fix it")


class ErrorAnswer(BaseModel):
    """Every 4xx/5xx answer."""

    error: ErrorBody


class QueueState(BaseModel):
    running: str | None = Field(description="the running job's id")
    queued: int = Field(description="jobs waiting")


class UploadMemory(BaseModel):
    in_memory_bytes: int = Field(description="bytes of uploads and results held in memory")
    memory_limit_bytes: int = Field(description="the budget (--max-memory); beyond it images stay on disk only")


class WorkerInfo(BaseModel):
    id: int = Field(description="the worker's number (0, 1, ...)")
    device: str = Field(description="its device: cpu, cuda:0, ...; 'auto' before its engine chose one; a Ray "
                        "worker's device@node once its actor runs")
    kind: Literal["local", "ray"] = Field(description="an engine in the server's process, or a Ray actor")
    state: Literal["idle", "running"]
    job: str | None = Field(description="the id of the job it runs (null: none, or a preprocess call)")


class Workers(BaseModel):
    """Where jobs run (``ctrlgen serve --workers/--devices/--ray``; docs/scaling.md)."""

    count: int
    items: list[WorkerInfo]


class Warmth(BaseModel):
    """How far the server is with warming up (docs/protocol.md#warm-up)."""

    state: Literal["warming", "ready"] = Field(
        description="'warming' while the server imports torch/diffusers (and loads --preload) right after start; "
        "jobs are accepted meanwhile and run once it is done. 'ready' after (also when warming up failed)")
    preload: str | None = Field(default=None, description="the model named by --preload, if any")
    warmup_error: str | None = Field(default=None, description="why warming up (or the preload) failed; jobs "
                                     "still run, loading what they need")
    warmup_s: float | None = Field(default=None, description="seconds warming up took, once ready")


class Health(Warmth):
    status: Literal["ok"]
    version: str
    queue: QueueState
    uploads: UploadMemory
    workers: Workers | None = Field(default=None, description="the workers and what each runs")


class ParamInfo(BaseModel):
    """A preprocessor's or adapter's parameter, as ``ctrlgen plugins --json`` prints it."""

    name: str
    type: str = Field(description="int, float, bool, choice, str, image, model or json")
    default: Any = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    choices: list[Any]
    description: str
    category: str
    required: bool


class FeatureInfo(BaseModel):
    """A job feature (the upscale task, hires fix, ...): the job field it lives in and its params."""

    name: str
    field: str = Field(description="the job field that configures it")
    tasks: list[str] = Field(description="the tasks it applies to")
    description: str
    params: list[ParamInfo]
    resamplers: list[str] = Field(default_factory=list, description="upscaler names that need no model (upscaler "
                                  "models are in `models`, category upscale_models)")


class WeightInfo(BaseModel):
    """A weight file a preprocessor reads from the model store."""

    filename: str
    folders: list[str]
    source: str
    alternatives: list[str]


class PreprocessorInfo(BaseModel):
    name: str
    description: str
    category: str
    params: list[ParamInfo]
    needs_weights: bool
    weights: list[WeightInfo]


class DetectorInfo(BaseModel):
    name: str
    description: str
    finds: list[str] = Field(description="what it finds: face, hand, person, or a model's own labels")
    params: list[ParamInfo]
    needs_weights: bool
    weights: list[WeightInfo]
    requires: list[str] = Field(description="Python modules it imports")


class AdapterInfo(BaseModel):
    name: str
    description: str
    architectures: list[str]
    params: list[ParamInfo]


class ModelInfo(BaseModel):
    name: str = Field(description="the name jobs use")
    category: str
    architecture: str | None
    kind: str | None
    variant: str | None
    size_bytes: int


class Limits(BaseModel):
    max_upload_bytes: int
    max_pixels: int
    max_side: int
    max_queue: int


class Provider(BaseModel):
    plugin: str
    distribution: str
    version: str


class Conflict(BaseModel):
    """A name several plugins provide: left out of the lists and refused where used."""

    kind: str
    name: str
    providers: list[Provider]
    message: str


class Capabilities(Warmth):
    version: str
    preprocessors: list[PreprocessorInfo]
    adapters: list[AdapterInfo]
    detectors: list[DetectorInfo] = Field(description="detectors for face/hand fixing (docs/detectors.md)")
    models: list[ModelInfo]
    samplers: list[str] = Field(description="A1111 sampler names")
    limits: Limits
    image_formats: list[Literal["raw", "png", "webp"]]
    conflicts: list[Conflict]
    features: list[FeatureInfo] = Field(default_factory=list, description="job features and the fields that "
                                        "configure them (upscale, hires fix; docs/jobs.md)")
    workers: Workers | None = Field(default=None, description="the workers jobs run on, and what each runs")


class UploadAnswer(BaseModel):
    id: str = Field(pattern=REF_PATTERN, description="the reference jobs use")
    width: int
    height: int
    channels: Literal[1, 3, 4]
    existed: bool = Field(description="true: the server had it already and did not read the body (200)")


class SubmitAnswer(BaseModel):
    id: str
    position: int = Field(description="jobs that run before it (0: it is next; also 0 once it runs or has ended)")
    status: JobStatus | Literal["expired"] = Field(
        description="'queued' for a new job (202); a repeated Idempotency-Key (200) answers the job's status "
        "now, 'expired' once its results were dropped")
    existed: bool = Field(default=False, description="true: an earlier submission with this Idempotency-Key")


class ResultInfo(BaseModel):
    index: int
    width: int
    height: int
    channels: Literal[1, 3, 4] = Field(description="3 (RGB), or 4 (RGBA) when the job's image had alpha")
    seed: int
    label: str | SkipJsonSchema[None] = _absent_unless(
        "which layer of a LayerDiffuse job this image is: foreground (RGBA), background or blended (the "
        "job's adapters section lists the order)")
    changed_box: list[int] | SkipJsonSchema[None] = _absent_unless(
        "[x0, y0, x1, y1] in the result's own frame: the pixels that may differ from the job's image (the "
        "feathered mask's padded bounds); absent when the whole image is new (txt2img). GET the result with "
        "?changed=1 for only this crop")
    offset: list[int] | SkipJsonSchema[None] = _absent_unless(
        "[x, y]: where the result sits in the canvas (the job's image_offset, else [0, 0]); present with "
        "changed_box or canvas_size")
    canvas_size: list[int] | SkipJsonSchema[None] = _absent_unless(
        "[width, height] of the canvas the job's image is a patch of (the job's canvas_size)")


class JobErrorBody(BaseModel):
    code: JobErrorCode | Literal["interrupted"]
    message: str


class JobItem(BaseModel):
    id: str
    status: JobStatus
    position: int = Field(description="jobs that run before it while queued (0: it is next); 0 once it runs "
                          "or has ended")
    created: float = Field(description="Unix seconds")
    started: float | None
    ended: float | None
    task: Task
    model: str | None


class JobDetail(JobItem):
    results: list[ResultInfo] | SkipJsonSchema[None] = _absent_unless("once finished")
    error: JobErrorBody | SkipJsonSchema[None] = _absent_unless("once failed or interrupted")


class JobList(BaseModel):
    jobs: list[JobItem] = Field(description="queued, running and kept ended jobs, in submission order")


class CancelAnswer(BaseModel):
    id: str
    status: JobStatus = Field(description="queued job: 'cancelled' (dropped at once); running job: 'running' "
                              "(a cancelled event follows); ended job: its status, unchanged")


# -- event payloads (the data of each Server-Sent Event, by kind) -----------------------------------
class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QueuedEvent(_Event):
    position: int
    restored: bool | SkipJsonSchema[None] = _absent_unless("true: the job was restored from the journal after a "
                                                           "restart (its history starts again)")


class StartedEvent(_Event):
    pass


class ProgressEvent(_Event):
    step: int
    total: int


class PreviewEvent(_Event):
    step: int
    total: int
    width: int
    height: int
    format: Literal["png"]
    data: str = Field(description="the PNG, base64; longest side at most 256")


class DetailEvent(_Event):
    """A fix pass's progress (docs/fixing.md, Events): which image, pass and detection, and the phase."""

    phase: Literal["detected", "step", "skipped", "done"] = Field(
        description="detected: after the detector and the selection; step: a denoising step of a repaint; "
                    "skipped: a detection left alone; done: a detection repainted and pasted back")
    image_index: int = Field(description="the batch image the pass runs on")
    pass_index: int = Field(description="the pass, in job.detail")
    found: int | SkipJsonSchema[None] = _absent_unless("detected: all detections the detector found")
    detections: int = Field(description="how many detections the pass repaints")
    boxes: list[list[float]] | SkipJsonSchema[None] = _absent_unless(
        "detected: the box of each detection to repaint, [x0, y0, x1, y1] in pixels")
    detection: int | SkipJsonSchema[None] = _absent_unless("step, skipped, done: the detection (0-based)")
    cycle: int | SkipJsonSchema[None] = _absent_unless("step, skipped, done: the cycle (0-based)")
    step: int | SkipJsonSchema[None] = _absent_unless("step: the denoising step (1-based)")
    total: int | SkipJsonSchema[None] = _absent_unless("step: the repaint's steps")
    reason: str | SkipJsonSchema[None] = _absent_unless("skipped: why ('[SKIP]', 'empty mask')")


class FinishedEvent(_Event):
    results: list[ResultInfo]


class ErrorEvent(_Event):
    code: JobErrorCode
    message: str


class CancelledEvent(_Event):
    pass


class InterruptedEvent(_Event):
    code: Literal["interrupted"]
    message: str


EVENTS: dict[str, type[BaseModel]] = {
    "queued": QueuedEvent, "started": StartedEvent, "progress": ProgressEvent, "preview": PreviewEvent,
    "detail": DetailEvent, "finished": FinishedEvent, "error": ErrorEvent, "cancelled": CancelledEvent, "interrupted": InterruptedEvent}
