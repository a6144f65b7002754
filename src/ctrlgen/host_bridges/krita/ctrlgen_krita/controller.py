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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import kritadoc
from .client_import import Client, ClientError, RawImage, ServerNotRunning
from .fixing import (
    FixSettings,
    boxes_in_document,
    build_fix_job,
    choose_detector,
    detected_boxes,
    found_message,
)
from .logic import (
    Capture,
    ControlLayer,
    DocumentError,
    JobQueue,
    Settings,
    build_job,
    check_settings,
    copy_settings,
    error_message,
    event_error_message,
    layer_pixels_for_server,
    model_architecture,
    result_layer_name,
    set_path,
    to_bgra,
)
from .results import ResultHistory
from .styles import Style, apply_style


@dataclass
class _Job:
    key: int
    doc: Any
    capture: Capture
    prompt: str = ""
    cancel: threading.Event = field(default_factory=threading.Event)
    job_id: str = ""
    layers: list[Any] = field(default_factory=list)
    kind: str = "generate"  # generate, detect (a fix's detections only) or fix
    target: str = ""  # for detect and fix: faces or hands
    boxes: list[tuple[int, int, int, int]] | None = None  # what a detect job found, in its image
    fix_context: tuple[Settings, FixSettings, str] | None = None  # a detect job's settings and detector
    settings: Settings | None = None  # what the job was made with (for the history)


@dataclass
class PendingFix:
    """Detections shown to the artist, waiting for Run fix or Cancel."""

    doc: Any
    capture: Capture
    target: str
    detector: str
    boxes: list[tuple[int, int, int, int]]  # in the captured region's coordinates
    settings: Settings
    fix: FixSettings

    @property
    def document_boxes(self) -> list[tuple[int, int, int, int]]:
        return boxes_in_document(self.boxes, self.capture.region)


class Controller:
    """State behind the docker. ``document`` returns the document to work on (the active one)."""

    HEALTH_EVERY_S = 5.0  # how often a connected docker checks that the server still answers
    KEEP_ACTIVE_S = 1.5  # how long after a result the user's active layer is given back

    def __init__(self, document: Callable[[], Any], on_change: Callable[[], None] | None = None):
        self.document = document
        self.on_change = on_change or (lambda: None)
        self.settings = Settings()
        self.fix = FixSettings()
        self.client: Client | None = None
        self.capabilities: dict[str, Any] = {}
        self.connection = "disconnected"  # disconnected, connecting, connected, lost, error
        self.last_job_failed = False
        self.message = ""
        self.queue = JobQueue()
        self.results: list[tuple[Any, Any]] = []  # (document, layer) of inserted results, newest last
        # The running job's latest preview: (queue key, PNG bytes, step, total); None when there is none.
        self.preview: tuple[int, bytes, int, int] | None = None
        self.pending_fix: PendingFix | None = None
        self.history = ResultHistory()
        self.style: Style | None = None  # applied to each job's settings (see styles.py)
        self._jobs: dict[int, _Job] = {}
        self._outbox: queue.Queue = queue.Queue()
        self._health_due = 0.0
        self._health_running = False
        self._polling = False
        # (document, result layer id, the layer to keep active, until): Krita's view makes a new
        # layer active on a later event; for a moment after each result, give the user's back.
        self._keep_active: list[tuple[Any, str, Any, float]] = []

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

    def status_text(self) -> str:
        """One line for the docker: connected or not, and whether the last job failed."""
        if self.connection == "connected":
            return f"Connected to {self.url}" + (" — the last job failed" if self.last_job_failed else "")
        if self.connection == "lost":
            return (f"Server lost at {self.url}: start `ctrlgen serve` (the docker reconnects when it answers "
                    "there again, or press Connect)")
        return {"connecting": "Connecting…"}.get(self.connection, "Not connected")

    def _check_health(self) -> None:
        """While connected (or lost), ask the server every few seconds whether it still answers."""
        if self.client is None or self.connection not in ("connected", "lost") or self._health_running:
            return
        now = time.monotonic()
        if now < self._health_due:
            return
        self._health_due, self._health_running = now + self.HEALTH_EVERY_S, True
        client = self.client

        def work() -> None:
            try:
                client.health()
                self._outbox.put(("health", client, True))
            except Exception:  # any failure: the server is not there (the message says what to do)
                self._outbox.put(("health", client, False))

        self._spawn(work)

    # -- generating ---------------------------------------------------------------------------
    def _can_send(self) -> bool:
        if self.client is None:
            self.message = "Not connected: start the server with `ctrlgen serve`, then press Connect."
            return False
        return True

    def generate(self, require_selection: bool = False) -> int | None:
        """Read the document now and queue a job; returns its key in :attr:`queue`, or None
        (then :attr:`message` says why). With a selection the job inpaints it; without, it
        generates (strength 100 %) or refines (below) the whole canvas. ``require_selection``:
        refuse to work without a selection (the Inpaint action)."""
        if not self._can_send():
            return None
        doc = self.document()
        try:
            settings = self._job_settings()
            check_settings(settings)
            capture = kritadoc.capture(doc, settings)
            if require_selection and capture.task != "inpaint":
                raise DocumentError("Inpaint needs a selection: select the area to repaint first.")
        except DocumentError as exc:
            self.message = str(exc)
            return None
        architecture = model_architecture(self.capabilities, settings.model)
        key = self._start(doc, capture, capture.task, settings,
                          lambda: build_job(settings, capture, architecture))
        if capture.skipped:
            self.message = f"Hidden layers left out: {', '.join(capture.skipped)} (show them to use them)."
        return key

    def _job_settings(self) -> Settings:
        """A copy of the settings (later edits in the docker do not change a job), through the style."""
        settings = copy.deepcopy(self.settings)
        if self.style is not None:
            settings = apply_style(self.style, settings, self.capabilities)
        return settings

    def _start(self, doc: Any, capture: Capture, task: str, settings: Settings, build: Callable[[], tuple],
               kind: str = "generate", target: str = "") -> int:
        entry = self.queue.add("", task)
        entry.name = result_layer_name(entry.key, task, settings.prompt)
        running = _Job(entry.key, doc, capture, prompt=settings.prompt, kind=kind, target=target, settings=settings)
        self._jobs[entry.key] = running
        self.message = ""
        client = self.client
        self._spawn(lambda: self._run_job(client, running, build, settings.live_preview and kind != "detect"))
        return entry.key

    def _run_job(self, client: Client, running: _Job, build: Callable[[], tuple], preview: bool) -> None:
        key = running.key
        post = self._outbox.put
        try:
            job, images = build()
            try:
                job_id = client.submit(self._uploaded(client, job, images), preview=preview)
            except ClientError as exc:
                # The server drops old uploads when its memory fills; this client may still
                # believe it holds one. Send them again, once.
                if exc.status != 422 or "sha256:" not in exc.message:
                    raise
                client.forget_uploads()
                job_id = client.submit(self._uploaded(client, job, images), preview=preview)
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
                boxes = detected_boxes(event.kind, event.data)
                if boxes is not None and running.boxes is None:
                    running.boxes = boxes
                post(("event", key, event.kind, dict(event.data)))
                final = event
            if final is None or final.kind != "finished":
                return
            if running.kind == "detect":
                post(("detected", key, running.boxes or []))
                return
            region = running.capture.region
            alpha = running.capture.mask
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
            post(("failed", key, error_message(exc, client.url), isinstance(exc, ServerNotRunning)))

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

    def _drop_jobs_of_closed_documents(self) -> None:
        """A job whose document was closed is cancelled on the server, its entry ended with a message."""
        for key, running in list(self._jobs.items()):
            if kritadoc.is_open(running.doc):
                continue
            self._jobs.pop(key)
            running.cancel.set()
            self._clear_preview(key)
            entry = self.queue.get(key)
            if entry is not None and entry.active:
                entry.status = "cancelled"
            self.message = f"The document of job #{key} was closed: the job was cancelled and nothing was added."
            if running.job_id and self.client is not None:
                client, job_id = self.client, running.job_id
                self._spawn(lambda client=client, key=key, job_id=job_id: self._cancel_on_server(client, key, job_id))
        if self.pending_fix is not None and not kritadoc.is_open(self.pending_fix.doc):
            self.pending_fix = None

    # -- fixing faces and hands ---------------------------------------------------------------
    def detect(self, target: str) -> int | None:
        """Step 1 of Fix faces / Fix hands: find them in the selection (or the whole document)
        and show them (:attr:`pending_fix`); nothing is repainted. Returns the job's key or None."""
        if not self._can_send():
            return None
        doc = self.document()
        fix = copy.deepcopy(self.fix)
        try:
            settings = self._job_settings()
            check_settings(settings)
            detector = choose_detector(self.capabilities, target, fix.face_detector if target == "faces"
                                       else fix.hand_detector)
            capture = kritadoc.capture_for_fix(doc, settings)
            job = build_fix_job(settings, fix, detector, detect_only=True)
        except DocumentError as exc:
            self.message = str(exc)
            return None
        self.pending_fix = None
        key = self._start(doc, capture, f"find {target}", settings,
                          lambda: (job, {"image": kritadoc.pixels_for_server(capture)}), kind="detect",
                          target=target)
        self._jobs[key].fix_context = (settings, fix, detector)
        return key

    def run_fix(self) -> int | None:
        """Step 2: repaint the detections shown; the fixed picture becomes a new layer."""
        pending = self.pending_fix
        if pending is None:
            self.message = "Nothing to fix yet: press Fix faces or Fix hands first."
            return None
        if not self._can_send():
            return None
        if not kritadoc.is_open(pending.doc):
            self.pending_fix = None
            self.message = "The document was closed: nothing to fix."
            return None
        self.pending_fix = None
        try:
            job = build_fix_job(pending.settings, pending.fix, pending.detector, detect_only=False)
        except DocumentError as exc:
            self.message = str(exc)
            return None
        capture = pending.capture
        key = self._start(pending.doc, capture, f"fix {pending.target}", pending.settings,
                          lambda: (job, {"image": kritadoc.pixels_for_server(capture)}), kind="fix",
                          target=pending.target)
        running = self._jobs[key]
        running.prompt = pending.fix.prompt or pending.settings.prompt
        # The history records what the fix was made with: its prompt and strength.
        running.settings = copy_settings(pending.settings, prompt=running.prompt, strength=pending.fix.strength)
        return key

    def cancel_fix(self) -> None:
        """Forget the detections shown; nothing is repainted."""
        if self.pending_fix is not None:
            self.pending_fix = None
            self.message = "Fix cancelled."

    # -- control maps ---------------------------------------------------------------------------
    def preview_control(self, control: ControlLayer) -> bool:
        """Run the control layer's preprocessor on the server and insert the map as a new layer.
        With preprocessor ``none`` the map is the layer as the model sees it: transparent parts white."""
        if not self._can_send():
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
                if control.preprocessor in ("", "none"):
                    mapped = kritadoc.flatten_on_white(bgra, region.width, region.height)
                else:
                    pixels, channels = layer_pixels_for_server(bgra)
                    image, _ = client.preprocess(control.preprocessor, RawImage(pixels, region.width,
                                                                                region.height, channels))
                    mapped = to_bgra(image.data, image.channels)
                self._outbox.put(("map", doc, name, region, mapped))
            except Exception as exc:
                self._outbox.put(("map_failed", error_message(exc, client.url)))

        self._spawn(work)
        return True

    # -- results --------------------------------------------------------------------------------
    def discard_last(self) -> bool:
        """Remove the newest result layer (Ctrl+Z would too) and its history entry."""
        while self.results:
            doc, layer = self.results.pop()
            if not kritadoc.is_open(doc):
                continue
            item = next((i for i in self.history.items if i.layer is layer), None)
            try:
                if item is not None:
                    self.history.discard(item)
                else:
                    kritadoc.remove_layer(doc, layer)
                return True
            except RuntimeError:  # the layer was deleted meanwhile
                continue
        return False

    @property
    def busy(self) -> bool:
        return bool(self.queue.active()) or self.connection == "connecting"

    def poll(self) -> bool:
        """Apply what the worker threads reported. GUI thread only. True if anything changed.

        Not re-entrant: a Krita call made while applying a result can run the event loop, which
        fires the docker's timer again; that inner poll does nothing."""
        if self._polling:
            return False
        self._polling = True
        try:
            return self._poll()
        finally:
            self._polling = False

    def _restore_active(self) -> None:
        now = time.monotonic()
        keep = []
        for doc, layer_id, active, until in self._keep_active:
            if now > until or not kritadoc.is_open(doc):
                continue
            keep.append((doc, layer_id, active, until))
            current = doc.activeNode()
            if current is not None and kritadoc.node_id(current) == layer_id:
                doc.setActiveNode(active)
        self._keep_active = keep

    def _poll(self) -> bool:
        changed = False
        if self._keep_active:
            self._restore_active()
        jobs_before = len(self._jobs)
        self._drop_jobs_of_closed_documents()
        changed = len(self._jobs) != jobs_before
        self._check_health()
        while True:
            try:
                message = self._outbox.get_nowait()
            except queue.Empty:
                break
            changed = True
            try:
                self._handle(message)
            except Exception as exc:  # a document closed under us, ...: a message, never a Script error
                self.message = f"Could not apply the result: {type(exc).__name__}: {exc}"
        if changed:
            self.on_change()
        return changed

    def _handle(self, message: tuple) -> None:
        kind = message[0]
        if kind == "connected":
            _, self.client, self.capabilities = message
            self.connection, self.message, self.last_job_failed = "connected", "", False
            self._health_due = time.monotonic() + self.HEALTH_EVERY_S
        elif kind == "connect_failed":
            self.client, self.connection, self.message = None, "error", message[1]
        elif kind == "health":
            _, client, alive = message
            self._health_running = False
            if client is self.client and self.connection in ("connected", "lost"):
                self.connection = "connected" if alive else "lost"
        elif kind == "submitted":
            self.queue.submitted(message[1], message[2])
        elif kind == "preview":
            _, key, png, step, total = message
            if key in self._jobs and not self._jobs[key].cancel.is_set():
                self.preview = (key, png, step, total)
        elif kind == "event":
            _, key, event_kind, data = message
            if key not in self._jobs:
                return  # dropped (its document was closed): its entry is ended already
            self.queue.apply_event(key, event_kind, data)
            if event_kind in ("finished", "error", "cancelled"):
                self._clear_preview(key)
            if event_kind == "error":
                self.message = event_error_message(data)
                self.last_job_failed = True
                self._jobs.pop(key, None)
            elif event_kind == "cancelled":
                self.message = "Cancelled."
                self._jobs.pop(key, None)
            elif event_kind == "finished":
                self.last_job_failed = False
        elif kind == "detected":
            self._show_detections(message[1], message[2])
        elif kind == "result":
            self._insert_results(message[1], message[2])
        elif kind == "failed":
            _, key, text, lost = message
            self._clear_preview(key)
            if key in self._jobs:
                self.queue.fail(key, text)
                self._jobs.pop(key, None)
                self.message = text
                self.last_job_failed = True
                if lost and self.connection == "connected":
                    self.connection = "lost"
        elif kind == "note":
            self.message = message[2]
        elif kind == "map":
            _, doc, name, region, bgra = message
            if not kritadoc.is_open(doc):
                self.message = "The document was closed before its control map arrived."
                return
            kritadoc.insert_layer(doc, name, bgra, region, above=kritadoc.active_layer(doc))
        elif kind == "map_failed":
            self.message = message[1]

    def _show_detections(self, key: int, boxes: list) -> None:
        running = self._jobs.pop(key, None)
        if running is None or running.cancel.is_set():
            return
        settings, fix, detector = running.fix_context
        where = "selection" if running.capture.mask is not None else "document"
        self.message = found_message(running.target, boxes, where)
        if boxes:
            self.pending_fix = PendingFix(running.doc, running.capture, running.target, detector, list(boxes),
                                          settings, fix)

    def _insert_results(self, key: int, layers: list) -> None:
        running = self._jobs.pop(key, None)
        entry = self.queue.get(key)
        if running is None or running.cancel.is_set() or entry is None:
            return  # cancelled after it finished: the user asked for nothing to be added
        if not kritadoc.is_open(running.doc):
            self.message = f"The document of job #{key} was closed before its result arrived: nothing was added."
            return
        task = running.capture.task if running.kind == "generate" else entry.task
        settings = running.settings or self.settings
        if running.kind == "upscale":  # the document takes the result's size (every layer scaled)
            from .upscale import resize_document

            resize_document(running.doc, running.capture.region)
        for index, (bgra, seed) in enumerate(layers):
            layer = None
            if not settings.keep_in_history:
                name = result_layer_name(key, task, running.prompt, seed)
                active = kritadoc.active_layer(running.doc)
                layer = kritadoc.insert_layer(running.doc, name, bgra, running.capture.region,
                                              above=running.capture.above)
                if active is not None:
                    self._keep_active.append((running.doc, kritadoc.node_id(layer), active,
                                              time.monotonic() + self.KEEP_ACTIVE_S))
                running.layers.append(layer)
                self.results.append((running.doc, layer))
            self.history.add(running.doc, key, index, running.capture.region, settings, task, seed, bgra,
                             running.capture.above, layer)
        entry.name = running.layers[0].name() if running.layers else entry.name

    def _clear_preview(self, key: int) -> None:
        if self.preview is not None and self.preview[0] == key:
            self.preview = None

    def _spawn(self, work: Callable[[], None]) -> None:
        threading.Thread(target=work, name="ctrlgen-krita", daemon=True).start()
