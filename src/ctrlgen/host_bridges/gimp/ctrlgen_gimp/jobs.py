"""Running one job on the server for a procedure: upload, submit, follow, download.

No GIMP here: ``on_progress(fraction, text)`` is the procedure's progress bar, and a
:class:`~ctrlgen_gimp.watchdog.Watchdog` stands by to cancel the job if GIMP ends the plug-in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .client_import import Client, ClientError, JobFailed, RawImage
from .logic import progress_of
from .watchdog import Watchdog


def run_job(client: Client, job: dict[str, Any], images: dict[str, RawImage],
            on_progress: Callable[[float | None, str | None], None]) -> tuple[list[RawImage], dict[str, Any]]:
    """The job's result images and its ``finished`` event's data; a job error, or a cancel
    from elsewhere, raises JobFailed."""
    job = dict(job)
    for field, image in images.items():
        job[field] = client.upload(image)
    try:
        job_id = client.submit(job)
    except ClientError as exc:  # the server evicted an upload this client remembered: send again
        if exc.status != 422 or "sha256:" not in exc.message:
            raise
        client.forget_uploads()
        for field, image in images.items():
            job[field] = client.upload(image)
        job_id = client.submit(job)
    watchdog = Watchdog(client)
    watchdog.arm(job_id)
    try:
        final = client.wait(job_id, lambda event: on_progress(*progress_of(event.kind, event.data)),
                            raise_on_error=True)
        if final.kind == "cancelled":
            raise JobFailed("cancelled", f"job {job_id} was cancelled", job_id)
        results = [client.result(job_id, int(item.get("index", position)))
                   for position, item in enumerate(final.data.get("results", []))]
    except (ClientError, OSError):
        try:  # the plug-in gives up on this job (lost connection...): do not leave it running
            client.cancel(job_id)
        except (ClientError, OSError):
            pass
        raise
    finally:
        watchdog.disarm()
    return results, final.data
