"""What the docker's buttons do, without widgets: connect, generate, cancel, preview maps.

Threading: Krita's API is used only from the GUI thread (``generate`` reads the document,
``poll`` writes results into it). Network work runs on plain ``threading`` threads that put
messages on a queue; the docker drains it from a ``QTimer`` by calling :meth:`poll`. Nothing on
the GUI thread waits for the network, so big uploads and slow jobs never freeze Krita.
"""

from __future__ import annotations

import base64
import binascii
import copy
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import kritadoc
from .client_import import Client, ClientError, RawImage
from .logic import (
    Capture,
    ControlLayer,
    DocumentError,
    JobQueue,
    Settings,
    build_job,
    check_settings,
    error_message,
    event_error_message,
    layer_pixels_for_server,
    model_architecture,
    result_layer_name,
    set_path,
    to_bgra,
)


@dataclass
class _Job:
    key: int
    doc: Any
    capture: Capture
    prompt: str = ""
    cancel: threading.Event = field(default_factory=threading.Event)
    job_id: str = ""
    layers: list[Any] = field(default_factory=list)


class Controller:
    """State behind the docker. ``document`` returns the document to work on (the active one)."""

    def __init__(self, document: Callable[[], Any], on_change: Callable[[], None] | None = None):
        self.document = document
        self.on_change = on_change or (lambda: None)
        self.settings = Settings()
        self.client: Client | None = None
        self.capabilities: dict[str, Any] = {}
        self.connection = "disconnected"  # disconnected, connecting, connected, error
        self.message = ""
        self.queue = JobQueue()
        self.results: list[tuple[Any, Any]] = []  # (document, layer) of inserted results, newest last
        # The running job's latest preview: (queue key, PNG bytes, step, total); None when there is none.
        self.preview: tuple[int, bytes, int, int] | None = None
        self._jobs: dict[int, _Job] = {}
        self._outbox: queue.Queue = queue.Queue()

    # -- connection ---------------------------------------------------------------------------
    def connect(self, url: str = "", token: str = "", config_folder: str | None = None) -> None:
        """Find the server (``url`` empty: ctrlgen's server.json) and read its capabilities."""
        self.connection, self.message = "connecting", ""

        def work() -> None:
            try:
                if url:
                    client = Client(url, token=token or None, config_folder=config_folder, timeout=60.0)
                else:
                    client = Client.discover(config_folder, token=token or None, timeout=60.0)
                capabilities = client.capabilities()
                self._outbox.put(("connected", client, capabilities))
            except Exception as exc:  # every failure becomes a message in the docker
                self._outbox.put(("connect_failed", error_message(exc, url)))

        self._spawn(work)

    @property
    def url(self) -> str:
        return self.client.url if self.client else ""

    # -- generating ---------------------------------------------------------------------------
    def generate(self, require_selection: bool = False) -> int | None:
        """Read the document now and queue a job; returns its key in :attr:`queue`, or None
        (then :attr:`message` says why). With a selection the job inpaints it; without, it
        generates (strength 100 %) or refines (below) the whole canvas. ``require_selection``:
        refuse to work without a selection (the Inpaint button)."""
        if self.client is None:
            self.message = "Not connected: start the server with `ctrlgen serve`, then press Connect."
            return None
        doc = self.document()
        settings = copy.deepcopy(self.settings)  # later edits in the docker do not change this job
        try:
            check_settings(settings)
            capture = kritadoc.capture(doc, settings)
            if require_selection and capture.task != "inpaint":
                raise DocumentError("Inpaint needs a selection: select the area to repaint first.")
        except DocumentError as exc:
            self.message = str(exc)
            return None
        entry = self.queue.add("", capture.task)
        entry.name = result_layer_name(entry.key, capture.task, settings.prompt)
        running = _Job(entry.key, doc, capture, prompt=settings.prompt)
        self._jobs[entry.key] = running
        self.message = ""
        client = self.client
        self._spawn(lambda: self._run_job(client, running, settings))
        return entry.key

    def _run_job(self, client: Client, running: _Job, settings: Settings) -> None:
        key = running.key
        post = self._outbox.put
        try:
            job, images = build_job(settings, running.capture, model_architecture(self.capabilities, settings.model))
            try:
                job_id = client.submit(self._uploaded(client, job, images), preview=settings.live_preview)
            except ClientError as exc:
                # The server drops old uploads when its memory fills; this client may still
                # believe it holds one. Send them again, once.
                if exc.status != 422 or "sha256:" not in exc.message:
                    raise
                client.forget_uploads()
                job_id = client.submit(self._uploaded(client, job, images), preview=settings.live_preview)
            running.job_id = job_id
            post(("submitted", key, job_id))
            if running.cancel.is_set():
                client.cancel(job_id)
            final = None
            for event in client.events(job_id):
                if event.kind == "preview":
                    # Decoded here; the GUI thread only shows the small PNG.
                    try:
                        png = base64.b64decode(event.data.get("data", ""), validate=True)
                    except (binascii.Error, ValueError):
                        continue  # a damaged preview is skipped; the job goes on
                    post(("preview", key, png, int(event.data.get("step", 0)), int(event.data.get("total", 0))))
                    continue
                post(("event", key, event.kind, dict(event.data)))
                final = event
            if final is None or final.kind != "finished":
                return
            region = running.capture.region
            alpha = running.capture.mask if running.capture.task == "inpaint" else None
            layers = []
            for position, item in enumerate(final.data.get("results", [])):
                image = client.result(job_id, int(item.get("index", position)))
                if (image.width, image.height) != (region.width, region.height):
                    # Generated at the model's resolution: bring it to the area's size.
                    image = kritadoc.scale_image(image, region.width, region.height)
                # Converted here, off the GUI thread; the GUI thread only copies bytes into a layer.
                layers.append((to_bgra(image.data, image.channels, alpha), item.get("seed")))
            post(("result", key, layers))
        except Exception as exc:  # every failure becomes the docker's message, never a traceback
            post(("failed", key, error_message(exc, client.url)))

    @staticmethod
    def _uploaded(client: Client, job: dict[str, Any], images: dict[str, Any]) -> dict[str, Any]:
        """``job`` with each image uploaded and its field set to the upload's reference."""
        for path, (data, width, height, channels) in images.items():
            set_path(job, path, client.upload(RawImage(data, width, height, channels)))
        return job

    def cancel(self, key: int | None = None) -> None:
        """Cancel one job (the newest active one when ``key`` is None). No layer is added for it."""
        active = [e for e in self.queue.active() if key is None or e.key == key]
        if not active:
            return
        entry = active[-1]
        running = self._jobs.get(entry.key)
        if running is None:
            return
        running.cancel.set()
        self._clear_preview(entry.key)
        client = self.client
        if running.job_id and client is not None:
            job_id = running.job_id
            self._spawn(lambda: self._cancel_on_server(client, entry.key, job_id))

    def _cancel_on_server(self, client: Client, key: int, job_id: str) -> None:
        try:
            client.cancel(job_id)
        except Exception as exc:
            self._outbox.put(("note", key, error_message(exc, client.url)))

    # -- control maps ---------------------------------------------------------------------------
    def preview_control(self, control: ControlLayer) -> bool:
        """Run the control layer's preprocessor on the server and insert the map as a new layer."""
        if self.client is None:
            self.message = "Not connected: start the server with `ctrlgen serve`, then press Connect."
            return False
        doc = self.document()
        try:
            if doc is None:
                raise DocumentError("Open or create a document first.")
            node = kritadoc.find_layer(doc, control.layer_id)
            if node is None:
                raise DocumentError(f"Control layer {control.layer_name!r} no longer exists.")
            kritadoc.check_color_space(doc.colorModel(), doc.colorDepth())
            region = kritadoc.canvas_rect(doc)
            doc.waitForDone()
            bgra = kritadoc.layer_pixels(node, region)
        except DocumentError as exc:
            self.message = str(exc)
            return False
        client = self.client
        name = f"[ctrlgen] control map: {control.preprocessor} ({control.layer_name})"

        def work() -> None:
            try:
                pixels, channels = layer_pixels_for_server(bgra)
                image = RawImage(pixels, region.width, region.height, channels)
                if control.preprocessor not in ("", "none"):
                    image, _ = client.preprocess(control.preprocessor, image)
                self._outbox.put(("map", doc, name, region, to_bgra(image.data, image.channels)))
            except Exception as exc:
                self._outbox.put(("map_failed", error_message(exc, client.url)))

        self._spawn(work)
        return True

    # -- results --------------------------------------------------------------------------------
    def discard_last(self) -> bool:
        """Remove the newest result layer (Ctrl+Z would too)."""
        while self.results:
            doc, layer = self.results.pop()
            try:
                kritadoc.remove_layer(doc, layer)
                return True
            except RuntimeError:  # the document or layer was closed/deleted meanwhile
                continue
        return False

    @property
    def busy(self) -> bool:
        return bool(self.queue.active()) or self.connection == "connecting"

    def poll(self) -> bool:
        """Apply what the worker threads reported. GUI thread only. True if anything changed."""
        changed = False
        while True:
            try:
                message = self._outbox.get_nowait()
            except queue.Empty:
                break
            changed = True
            self._handle(message)
        if changed:
            self.on_change()
        return changed

    def _handle(self, message: tuple) -> None:
        kind = message[0]
        if kind == "connected":
            _, self.client, self.capabilities = message
            self.connection, self.message = "connected", ""
        elif kind == "connect_failed":
            self.client, self.connection, self.message = None, "error", message[1]
        elif kind == "submitted":
            self.queue.submitted(message[1], message[2])
        elif kind == "preview":
            _, key, png, step, total = message
            if key in self._jobs and not self._jobs[key].cancel.is_set():
                self.preview = (key, png, step, total)
        elif kind == "event":
            _, key, event_kind, data = message
            self.queue.apply_event(key, event_kind, data)
            if event_kind in ("finished", "error", "cancelled"):
                self._clear_preview(key)
            if event_kind == "error":
                self.message = event_error_message(data)
                self._jobs.pop(key, None)
            elif event_kind == "cancelled":
                self.message = "Cancelled."
                self._jobs.pop(key, None)
        elif kind == "result":
            _, key, layers = message
            running = self._jobs.pop(key, None)
            entry = self.queue.get(key)
            if running is None or running.cancel.is_set() or entry is None:
                return  # cancelled after it finished: the user asked for nothing to be added
            for bgra, seed in layers:
                name = result_layer_name(key, running.capture.task, running.prompt, seed)
                try:
                    layer = kritadoc.insert_layer(running.doc, name, bgra, running.capture.region)
                except RuntimeError:  # the document was closed meanwhile
                    self.message = "The document was closed before the result arrived."
                    return
                running.layers.append(layer)
                self.results.append((running.doc, layer))
            entry.name = running.layers[0].name() if running.layers else entry.name
        elif kind == "failed":
            _, key, text = message
            self._clear_preview(key)
            self.queue.fail(key, text)
            self._jobs.pop(key, None)
            self.message = text
        elif kind == "note":
            self.message = message[2]
        elif kind == "map":
            _, doc, name, region, bgra = message
            kritadoc.insert_layer(doc, name, bgra, region)
        elif kind == "map_failed":
            self.message = message[1]

    def _clear_preview(self, key: int) -> None:
        if self.preview is not None and self.preview[0] == key:
            self.preview = None

    def _spawn(self, work: Callable[[], None]) -> None:
        threading.Thread(target=work, name="ctrlgen-krita", daemon=True).start()

