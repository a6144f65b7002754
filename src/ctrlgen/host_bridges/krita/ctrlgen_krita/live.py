"""The Live workspace: while you paint, the canvas (or the selection's box) is generated again.

:class:`LiveMode` has no widgets (tests drive it directly); :class:`LivePage` is its part of the
docker. How it works (docs/krita.md#live):

- Krita 5.1's Python API has no "the pixels changed" signal, so the docker's timer (a QTimer,
  every 50 ms) calls :meth:`LiveMode.tick`, which reads the region's projection every
  :attr:`LiveMode.poll_s` and compares it with the last one read.
- A change restarts the debounce: a frame is sent once the canvas has been still for
  :attr:`LiveMode.debounce_s` (strokes in quick succession make one frame).
- Frames go over one live session (``client.LiveSession``, a WebSocket on ``/v1/live``): the
  job's fields and the canvas stay on the server, and a frame sends only what changed (the
  changed box of the canvas). Latest wins: the server answers an older frame ``superseded``.
- The newest result is shown in the docker; **Apply** adds it as a layer (one undo step).

Network work runs on two threads (one sends, one receives); Krita is used on the GUI thread only.
"""

from __future__ import annotations

import itertools
import queue
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from . import kritadoc
from .logic import (
    DocumentError,
    Rect,
    check_color_space,
    error_message,
    generation_size,
    layer_pixels_for_server,
    to_bgra,
)
from .logic import model_architecture as _architecture

try:  # the copy of the client next to the plugin, or ctrlgen's own (as client_import does)
    from .client import LiveSession, RawImage
except ImportError:  # running from the source tree (tests)
    from ctrlgen.host_bridges.client import LiveSession, RawImage  # type: ignore[no-redef]


@dataclass
class LiveSettings:
    strength: float = 0.5  # img2img strength: how far a frame departs from the painting
    steps: int = 6  # LCM / Turbo / Lightning models need 4-8 (img2img runs steps x strength of them)
    sampler: str = ""  # "" = the docker's sampler (LCM for an LCM model or LCM-LoRA)
    cfg_scale: float = 0.0  # 0 = the docker's
    seed: int = -1  # -1: one random seed for the whole session (frames do not flicker)


@dataclass
class LiveFrame:
    """A result: which frame, the region it covers, its BGRA pixels at the region's size."""

    frame: int
    region: Rect
    bgra: bytes
    seed: int | None = None
    info: dict[str, Any] = field(default_factory=dict)


class LiveMode:
    """Live painting for one docker (GUI thread, except the two worker threads)."""

    poll_s = 0.25
    debounce_s = 0.4

    def __init__(self, controller: Any) -> None:
        self.controller = controller
        self.settings = LiveSettings()
        self.active = False
        self.session: Any = None
        self.message = ""
        self.latest: LiveFrame | None = None  # the newest done result
        self.statuses: dict[int, str] = {}  # frame id -> sent / done / superseded / cancelled / error
        self.applied: list[Any] = []  # layers Apply added
        self._inbox: queue.Queue = queue.Queue()
        self._outbox: queue.Queue = queue.Queue()
        self._ids = itertools.count(1)
        self._doc: Any = None
        self._seen: bytes | None = None  # the region's pixels at the last poll
        self._seen_region: Rect | None = None
        self._sent: bytes | None = None  # ... and when the last frame was sent
        self._changed_at: float | None = None
        self._next_poll = 0.0
        self._regions: dict[int, Rect] = {}
        self._opening = False
        self._seed = 0

    # -- on / off --------------------------------------------------------------------------------
    def start(self) -> bool:
        """Open a live session; frames follow the document's changes until :meth:`stop`."""
        client = self.controller.client
        if client is None:
            self.message = "Not connected: start the server with `ctrlgen serve`, then press Connect."
            return False
        if self.active:
            return True
        self.active, self._opening, self.message = True, True, "Live: connecting…"
        self._seen = self._sent = None
        self._changed_at = time.monotonic()  # the first frame: the canvas as it is
        seed = self.settings.seed if self.settings.seed >= 0 else (
            self.controller.settings.seed if self.controller.settings.seed >= 0 else random.randrange(2**31))
        self._seed = seed

        def open_session() -> None:
            try:
                session = LiveSession(client, timeout=30.0)
            except Exception as exc:  # every failure is a message in the docker
                self._inbox.put(("failed", error_message(exc, client.url)))
                return
            self._inbox.put(("opened", session))
            threading.Thread(target=self._receive, args=(session,), name="ctrlgen-live-in", daemon=True).start()
            threading.Thread(target=self._send, args=(session,), name="ctrlgen-live-out", daemon=True).start()

        threading.Thread(target=open_session, name="ctrlgen-live-open", daemon=True).start()
        return True

    def stop(self) -> None:
        self.active = False
        session, self.session = self.session, None
        self._outbox.put(None)
        if session is not None:
            session.close()
        if not self.message.startswith("Live failed"):
            self.message = "Live is off."

    # -- the GUI thread's part -------------------------------------------------------------------
    def tick(self, now: float | None = None) -> bool:
        """Called by the docker's timer: take results in, poll the canvas, send when it settled.
        True if anything the docker shows changed."""
        now = time.monotonic() if now is None else now
        changed = self._drain()
        if not self.active or self.session is None or kritadoc.busy():
            return changed
        if now >= self._next_poll:
            self._next_poll = now + self.poll_s
            try:
                region, pixels = self._read()
            except DocumentError as exc:
                self.message = str(exc)
                return True
            if pixels != self._seen or region != self._seen_region:
                self._seen, self._seen_region = pixels, region
                if pixels != self._sent:
                    self._changed_at = now
        if self._changed_at is not None and now - self._changed_at >= self.debounce_s and self._seen is not None:
            self._changed_at = None
            self._send_frame(self._seen_region, self._seen)
            changed = True
        return changed

    def _read(self) -> tuple[Rect, bytes]:
        doc = self.controller.document()
        if doc is None or not kritadoc.is_open(doc):
            raise DocumentError("Live: open a document to paint in.")
        check_color_space(doc.colorModel(), doc.colorDepth())
        self._doc = doc
        selection = doc.selection()
        canvas = kritadoc.canvas_rect(doc)
        region = canvas
        if selection is not None and selection.width() > 0 and selection.height() > 0:
            region = Rect(selection.x(), selection.y(), selection.width(), selection.height()).intersected(canvas)
        doc.waitForDone()  # the projection must hold the latest strokes
        return region, bytes(doc.pixelData(*region.tuple()))

    def _send_frame(self, region: Rect, bgra: bytes) -> None:
        controller = self.controller
        settings = controller.settings
        if not settings.model:
            self.message = "Live: choose a model first."
            return
        frame = next(self._ids)
        self._sent = bgra
        self._regions[frame] = region
        self.statuses[frame] = "sent"
        live = self.settings
        width, height = region.width, region.height
        if settings.scale_to_model:  # a moderate resolution: the model's native size
            width, height = generation_size(width, height, _architecture(controller.capabilities, settings.model))
        job = {"model": settings.model, "prompt": settings.prompt, "negative_prompt": settings.negative_prompt,
               "seed": int(self._seed), "steps": int(live.steps), "strength": float(live.strength),
               "cfg_scale": float(live.cfg_scale or settings.cfg_scale), "sampler": live.sampler or settings.sampler,
               "width": width, "height": height, "image": "live:canvas", "task": "img2img"}
        self._outbox.put((frame, job, region, bgra))
        self.message = f"Live: frame {frame} sent"

    def _drain(self) -> bool:
        changed = False
        while True:
            try:
                message = self._inbox.get_nowait()
            except queue.Empty:
                return changed
            changed = True
            kind = message[0]
            if kind == "opened":
                if self.active:
                    self.session, self._opening = message[1], False
                    self.message = "Live: paint, and the picture follows."
                else:
                    message[1].close()
            elif kind == "failed":
                self.active, self._opening = False, False
                self.message = f"Live failed: {message[1]}"
            elif kind == "result":
                _, frame, status, payload = message
                self.statuses[frame] = status
                if status == "done" and (self.latest is None or frame > self.latest.frame):
                    self.latest = payload
                    self.message = f"Live: frame {frame} ({payload.info.get('run_ms', 0) / 1000:.1f} s)"
                elif status == "error":
                    self.message = f"Live: frame {frame} failed: {payload}"

    def apply(self) -> Any:
        """Add the newest result as a layer (above the active one); the layer, or None."""
        latest, doc = self.latest, self._doc or self.controller.document()
        if latest is None or doc is None or not kritadoc.is_open(doc):
            self.message = "Live: no result to apply yet."
            return None
        name = f"[ctrlgen] live #{latest.frame}: {self.controller.settings.prompt[:40]}".rstrip(": ")
        layer = kritadoc.insert_layer(doc, name, latest.bgra, latest.region, above=kritadoc.active_layer(doc))
        self.applied.append(layer)
        self.message = f"Applied live frame {latest.frame} as a layer."
        return layer

    # -- worker threads ----------------------------------------------------------------------------
    def _send(self, session: Any) -> None:
        while True:
            item = self._outbox.get()
            while item is not None:  # latest wins here too: only the newest waiting frame goes
                try:
                    newer = self._outbox.get_nowait()
                except queue.Empty:
                    break
                if newer is None:
                    item = None
                    break
                self._inbox.put(("result", item[0], "superseded", None))
                item = newer
            if item is None or session.closed:
                return
            frame, job, region, bgra = item
            try:
                pixels, channels = layer_pixels_for_server(bgra)
                session.send(job, {"canvas": RawImage(pixels, region.width, region.height, channels)}, frame_id=frame)
            except Exception as exc:  # the session closed under us, ...
                self._inbox.put(("result", frame, "error", str(exc)))

    def _receive(self, session: Any) -> None:
        while not session.closed:
            try:
                result = session.receive(timeout=0.5)
            except Exception as exc:  # closed
                if self.active and self.session is session:
                    self._inbox.put(("failed", f"the live channel closed ({exc})"))
                return
            if result is None:
                continue
            payload: Any = None
            if result.status == "done" and result.image is not None:
                region = self._regions.get(result.frame)
                image = result.image
                if region is not None and (image.width, image.height) != (region.width, region.height):
                    image = kritadoc.scale_image(image, region.width, region.height)
                payload = LiveFrame(result.frame, region, to_bgra(image.data, image.channels),
                                    result.info.get("seed"), dict(result.info))
            elif result.status == "error":
                payload = (result.error or {}).get("message", "error")
            self._inbox.put(("result", result.frame, result.status, payload))


def _page_widgets():
    from .qt import (
        QDoubleSpinBox,
        QHBoxLayout,
        QLabel,
        QPushButton,
        QSpinBox,
        Qt,
        QtGui,
        QVBoxLayout,
        QWidget,
    )

    return QDoubleSpinBox, QHBoxLayout, QLabel, QPushButton, QSpinBox, Qt, QtGui, QVBoxLayout, QWidget


def make_page(live: LiveMode, parent: Any, read_settings: Any) -> tuple[Any, Any]:
    """The Live workspace's action row (Start/Stop, Apply) and page (options, the newest frame)."""
    QDoubleSpinBox, QHBoxLayout, QLabel, QPushButton, QSpinBox, Qt, QtGui, QVBoxLayout, QWidget = _page_widgets()

    row = QWidget(parent)
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    toggle = QPushButton("Start live", row)
    toggle.setCheckable(True)
    toggle.setToolTip("Live: while you paint, the canvas (or the selection's box) is generated again after "
                      "each pause; latest wins")
    apply_button = QPushButton("Apply", row)
    apply_button.setToolTip("Add the newest live frame as a layer")
    layout.addWidget(toggle, 1)
    layout.addWidget(apply_button)

    page = QWidget(parent)
    column = QVBoxLayout(page)
    column.setContentsMargins(0, 0, 0, 0)
    options = QHBoxLayout()
    strength = QDoubleSpinBox(page)
    strength.setRange(1, 100)
    strength.setSuffix(" %")
    strength.setValue(live.settings.strength * 100)
    strength.setToolTip("Strength: how far each frame departs from your painting")
    steps = QSpinBox(page)
    steps.setRange(1, 50)
    steps.setValue(live.settings.steps)
    steps.setToolTip("Steps: 4-8 for LCM, Turbo or Lightning models (img2img runs steps x strength)")
    options.addWidget(QLabel("Strength", page))
    options.addWidget(strength)
    options.addWidget(QLabel("Steps", page))
    options.addWidget(steps)
    column.addLayout(options)
    picture = QLabel(page)
    picture.setAlignment(Qt.AlignmentFlag.AlignCenter)
    picture.setMinimumHeight(64)
    picture.setToolTip("The newest live frame")
    column.addWidget(picture)
    shown = [0]

    def read() -> None:
        read_settings()
        live.settings.strength = strength.value() / 100
        live.settings.steps = steps.value()

    def toggled(on: bool) -> None:
        read()
        if on:
            on = live.start()
        else:
            live.stop()
        toggle.blockSignals(True)
        toggle.setChecked(on)
        toggle.setText("Stop live" if on else "Start live")
        toggle.blockSignals(False)

    toggle.toggled.connect(toggled)
    apply_button.clicked.connect(lambda: live.apply())
    strength.valueChanged.connect(lambda _value: read())
    steps.valueChanged.connect(lambda _value: read())

    def refresh() -> None:
        if toggle.isChecked() != live.active:
            toggle.blockSignals(True)
            toggle.setChecked(live.active)
            toggle.setText("Stop live" if live.active else "Start live")
            toggle.blockSignals(False)
        apply_button.setEnabled(live.latest is not None)
        latest = live.latest
        if latest is not None and shown[0] != latest.frame:
            shown[0] = latest.frame
            r = latest.region
            image = QtGui.QImage(latest.bgra, r.width, r.height, r.width * 4, QtGui.QImage.Format.Format_ARGB32)
            width = max(64, min(256, page.width() - 8))
            picture.setPixmap(QtGui.QPixmap.fromImage(image.scaledToWidth(
                width, Qt.TransformationMode.SmoothTransformation)))

    page.refresh = refresh
    page.toggle_button, page.apply_button, page.strength_spin, page.steps_spin = toggle, apply_button, strength, steps
    return row, page
