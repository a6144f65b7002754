"""Request bodies of the bridge protocol (they also make the server's OpenAPI document)."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Ref = Field(pattern=r"^sha256:[0-9a-f]{64}$", description="an upload: 'sha256:' + the sha256 of its body")


class SubmitRequest(BaseModel):
    """``POST /v1/jobs``: a job (docs/jobs.md) whose image fields are upload references."""

    model_config = ConfigDict(extra="forbid")

    job: dict[str, Any] = Field(description="the job, as in docs/jobs.md; images are 'sha256:<hex>' references")
    preview: bool = Field(default=False, description="send preview events (small PNGs) while denoising")


class PreprocessRequest(BaseModel):
    """``POST /v1/preprocess``: run one preprocessor on an uploaded image."""

    model_config = ConfigDict(extra="forbid")

    preprocessor: str = Field(description="a name from /v1/capabilities' preprocessors")
    image: str = Ref
    mask: str | None = Field(default=None, pattern=r"^sha256:[0-9a-f]{64}$")
    params: dict[str, Any] = Field(default_factory=dict, description="the preprocessor's params")
    format: Literal["raw", "png", "webp"] = "raw"
