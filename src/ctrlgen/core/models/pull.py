"""``ctrlgen models pull``: the one place ctrlgen uses the network, and only when asked.

Files go into the Hugging Face cache (``HF_HUB_CACHE``), which the built-in
``huggingface_cache`` model source scans, so a pulled model is found like any other and
never copied elsewhere.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from ctrlgen.core.errors import CtrlgenError

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")

# Without explicit files, take what ctrlgen can load safely and skip pickled duplicates.
DEFAULT_PATTERNS = ("*.safetensors", "*.json", "*.txt", "*.yaml", "*.onnx", "*.model")


def pull(repo_id: str, files: Sequence[str] = (), revision: str | None = None,
         patterns: Sequence[str] = DEFAULT_PATTERNS) -> list[Path]:
    """Download ``files`` of ``repo_id`` (or its safetensors/config files) into the HF cache."""
    if not REPO_ID.match(repo_id):
        raise CtrlgenError(f"{repo_id!r} is not a Hugging Face repo id; use ORG/NAME, e.g. lllyasviel/Annotators")
    try:
        import huggingface_hub
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:
        raise CtrlgenError("pulling models needs huggingface_hub: pip install huggingface_hub") from None
    try:
        if files:
            return [Path(huggingface_hub.hf_hub_download(repo_id, name, revision=revision)) for name in files]
        folder = huggingface_hub.snapshot_download(repo_id, revision=revision, allow_patterns=list(patterns))
        return [Path(folder)]
    except LocalEntryNotFoundError:
        raise CtrlgenError(
            f"cannot download {repo_id}: the Hugging Face hub is unreachable or HF_HUB_OFFLINE=1 is set. "
            "Download the files on a connected machine and copy them into a model folder."
        ) from None
    except HfHubHTTPError as exc:
        raise CtrlgenError(f"the Hugging Face hub refused {repo_id}: {exc}") from None
