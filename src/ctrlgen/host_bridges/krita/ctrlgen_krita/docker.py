"""The ctrlgen docker: widgets bound to a :class:`~.controller.Controller`.

Compact by design (it must work at 260 px wide and at the small size Krita first gives a
docker): the workspace, the model, the prompt and the one action button sit at the top and
never scroll; the workspace's options, the live preview, the queue and the history of results
scroll below them; the connection and the rarely-changed options are in a settings dialog.
"""

from __future__ import annotations

from typing import Any

from . import kritadoc
from .controller import Controller
from .logic import (
    REFERENCE_ONLY,
    ControlLayer,
    ReferenceLayer,
    action_label,
    matching_models,
    models_of,
    preprocessor_names,
)
from .pages import FixPage, GeneratePage, UpscalePage
from .qt import (
    QCheckBox,
    QComboBox,
    QFrame,
    QHBoxLayout,
    QLabel,
    QListView,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QStackedWidget,
    Qt,
    QtCore,
    QtGui,
    QTimer,
    QToolButton,
    QVBoxLayout,
    QWidget,
)
from .settings_dialog import SettingsDialog
from .styles import load_styles, styles_folder

# (id, label, tooltip, built): a workspace not built yet is listed greyed out.
WORKSPACES = (
    ("generate", "Generate", "Text to image, refine (img2img) and inpaint the selection", True),
    ("fix", "Fix faces / hands", "Find faces or hands, see them outlined, then repaint them (the detailer)", True),
    ("upscale", "Upscale", "Enlarge the document (× 1.5, × 2, × 4 or a size) with an upscaler model, refined in "
     "tiles; the result is a new layer", True),
    ("live", "Live", "Live painting: while you paint, the canvas (or the selection's box) is generated again; "
     "Apply adds the newest frame as a layer", True),
)
THUMB = 64
STATUS_COLOURS = {"connected": "#3a3", "connecting": "#c90", "lost": "#d33", "error": "#d33", "disconnected": "#888"}


def _krita_document() -> Any:
    try:
        from krita import Krita
    except ImportError:  # outside Krita (tests, screenshots): no document until one is given
        return None
    return Krita.instance().activeDocument()


class CtrlgenPanel(QWidget):
    """Everything the docker shows. Usable on its own (tests, screenshots) with any document getter."""

    BOX_COLOUR = FixPage.BOX_COLOUR

    def __init__(self, controller: Controller | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.controller = controller or Controller(_krita_document)
        self.controller.on_change = self.refresh
        self.settings_dialog = SettingsDialog(self)
        d = self.settings_dialog
        # The dialog's widgets, by their old names (scripts and tests use them).
        self.url_edit, self.token_edit, self.connect_button = d.url_edit, d.token_edit, d.connect_button
        self.steps_spin, self.cfg_spin, self.sampler_combo = d.steps_spin, d.cfg_spin, d.sampler_combo
        self.grow_spin, self.feather_spin, self.context_spin = d.grow_spin, d.feather_spin, d.context_spin
        self.source_combo, self.scale_check, self.preview_check = d.source_combo, d.scale_check, d.preview_check
        d.connect_button.clicked.connect(self.on_connect)
        self._build()
        self.timer = QTimer(self)
        self.timer.setInterval(50)
        self.timer.timeout.connect(self._tick)
        self.timer.start()
        self._ticks = 0
        self.refresh()

    # -- layout -------------------------------------------------------------------------------
    def _build(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(2, 2, 2, 2)
        outer.setSpacing(3)

        # 1. Always visible: workspace, status, settings; model; prompt; the action; progress; message.
        row = QHBoxLayout()
        self.workspace_combo = QComboBox(self)
        for index, (ident, label, tip, built) in enumerate(WORKSPACES):
            self.workspace_combo.addItem(label, ident)
            self.workspace_combo.setItemData(index, tip, Qt.ItemDataRole.ToolTipRole)
            if not built:
                self.workspace_combo.model().item(index).setEnabled(False)
        self.workspace_combo.setToolTip("Workspace: what the docker is for right now")
        self.workspace_combo.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.workspace_combo.setMinimumContentsLength(8)
        self.workspace_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.workspace_combo.currentIndexChanged.connect(self._workspace_changed)
        self.status_label = QLabel(self)
        self.status_label.setToolTip("Not connected")
        self.settings_button = QToolButton(self)
        self.settings_button.setText("⚙")
        self.settings_button.setToolTip("Settings: server connection, steps, sampler, selection, where results go")
        self.settings_button.clicked.connect(self.on_settings)
        row.addWidget(self.workspace_combo, 1)
        row.addWidget(self.status_label)
        row.addWidget(self.settings_button)
        outer.addLayout(row)

        self.model_combo = QComboBox(self)
        self.model_combo.setToolTip("Model: the checkpoint (SD 1.5, SDXL, …) from the server's model folders")
        self.model_combo.setMinimumContentsLength(10)
        self.model_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        outer.addWidget(self.model_combo)
        self.prompt_edit = QPlainTextEdit(self)
        self.prompt_edit.setPlaceholderText("Describe what to paint")
        self.prompt_edit.setToolTip("Prompt, A1111 syntax: (word:1.3), [a:b:0.5], <lora:name:0.8>")
        self.prompt_edit.setFixedHeight(self.prompt_edit.fontMetrics().lineSpacing() * 3 + 10)
        outer.addWidget(self.prompt_edit)

        self.action_stack = QStackedWidget(self)
        generate_row = QWidget(self.action_stack)
        row = QHBoxLayout(generate_row)
        row.setContentsMargins(0, 0, 0, 0)
        self.generate_button = QPushButton("Generate", generate_row)
        self.generate_button.setToolTip("Generate: the whole canvas; with a selection, inpaint it; below 100 % "
                                        "strength, refine")
        self.generate_button.clicked.connect(lambda: self.on_generate(False))
        self.cancel_button = QToolButton(generate_row)
        self.cancel_button.setText("✕")
        self.cancel_button.setToolTip("Cancel the newest running or queued job; nothing is added")
        self.cancel_button.clicked.connect(lambda: self.controller.cancel())
        row.addWidget(self.generate_button, 1)
        row.addWidget(self.cancel_button)
        self.action_stack.addWidget(generate_row)
        fix_row = QWidget(self.action_stack)
        row = QHBoxLayout(fix_row)
        row.setContentsMargins(0, 0, 0, 0)
        self.fix_faces_button = QPushButton("Fix faces", fix_row)
        self.fix_faces_button.setToolTip("Find the faces in the selection (or the document) and outline them; "
                                         "nothing is repainted until Run fix")
        self.fix_faces_button.clicked.connect(lambda: self.on_detect("faces"))
        self.fix_hands_button = QPushButton("Fix hands", fix_row)
        self.fix_hands_button.setToolTip("Find the hands in the selection (or the document) and outline them")
        self.fix_hands_button.clicked.connect(lambda: self.on_detect("hands"))
        self.run_fix_button = QPushButton("Run fix", fix_row)
        self.run_fix_button.setToolTip("Repaint what is outlined; the result is a new layer")
        self.run_fix_button.clicked.connect(self.on_run_fix)
        self.cancel_fix_button = QPushButton("Cancel", fix_row)
        self.cancel_fix_button.setToolTip("Forget the detections; nothing is repainted")
        self.cancel_fix_button.clicked.connect(self.on_cancel_fix)
        for button in (self.fix_faces_button, self.fix_hands_button, self.run_fix_button, self.cancel_fix_button):
            row.addWidget(button)
        self.action_stack.addWidget(fix_row)
        self.upscale_row = QWidget(self.action_stack)
        row = QHBoxLayout(self.upscale_row)
        row.setContentsMargins(0, 0, 0, 0)
        self.upscale_button = QPushButton("Upscale", self.upscale_row)
        self.upscale_button.setToolTip("Upscale the visible image: the document is enlarged (every layer scaled) "
                                       "and the refined picture is added as a new layer")
        self.upscale_button.clicked.connect(self.on_upscale)
        upscale_cancel = QToolButton(self.upscale_row)
        upscale_cancel.setText("✕")
        upscale_cancel.setToolTip("Cancel the newest running or queued job; nothing is added")
        upscale_cancel.clicked.connect(lambda: self.controller.cancel())
        row.addWidget(self.upscale_button, 1)
        row.addWidget(upscale_cancel)
        self.action_stack.addWidget(self.upscale_row)
        from .live import LiveMode, make_page  # the Live workspace (live.py)

        self.live = LiveMode(self.controller)
        self.live_row, self.live_page = make_page(self.live, self.action_stack, self.read_settings)
        self.action_stack.addWidget(self.live_row)
        self.action_stack.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
        outer.addWidget(self.action_stack)

        self.progress_bar = QProgressBar(self)
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setTextVisible(False)
        self.progress_bar.setFixedHeight(5)
        self.progress_bar.setToolTip("The running job's steps")
        outer.addWidget(self.progress_bar)
        self.message_label = QLabel("", self)
        self.message_label.setWordWrap(True)
        self.message_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.message_label.setToolTip("What happened, and what to do when something went wrong")
        outer.addWidget(self.message_label)

        # 2. Scrolls: the workspace's options, the live preview, the queue, the history.
        scroll = QScrollArea(self)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        body = self.body = QWidget(scroll)
        layout = QVBoxLayout(body)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(3)
        scroll.setWidget(body)
        outer.addWidget(scroll, 1)
        self.pages = QStackedWidget(body)
        self.generate_page = GeneratePage(self.on_add_control, self.on_add_reference, self.pages)
        self.fix_page = FixPage(self.pages)
        self.pages.addWidget(self.generate_page)
        self.pages.addWidget(self.fix_page)
        self.upscale_page = UpscalePage(self.pages)
        self.pages.addWidget(self.upscale_page)
        self.live_page.setParent(self.pages)
        self.pages.addWidget(self.live_page)
        layout.addWidget(self.pages)
        g = self.generate_page
        g.document = lambda: self.controller.document()
        self.styles: list[Any] = []
        g.style_combo.currentIndexChanged.connect(self._style_changed)
        g.strength_spin.valueChanged.connect(lambda _value: self._label_action())
        g.mode_combo.currentIndexChanged.connect(lambda _index: self._label_action())
        self.negative_edit, self.strength_spin, self.seed_spin = g.negative_edit, g.strength_spin, g.seed_spin
        self.preview_label = QLabel(body)
        self.preview_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.preview_label.hide()
        self._preview_shown: tuple[int, int] | None = None  # (key, step) on the label
        layout.addWidget(self.preview_label)
        self.queue_list = QListWidget(body)
        self.queue_list.setMaximumHeight(54)
        self.queue_list.setToolTip("Your jobs: sending, queued, running step/total, finished, error, cancelled")
        layout.addWidget(self.queue_list)

        self.history_list = QListWidget(body)
        self.history_list.setViewMode(QListView.ViewMode.IconMode)
        self.history_list.setIconSize(QtCore.QSize(THUMB, THUMB))
        self.history_list.setResizeMode(QListView.ResizeMode.Adjust)
        self.history_list.setMovement(QListView.Movement.Static)
        self.history_list.setWrapping(True)
        self.history_list.setMinimumHeight(THUMB + 34)
        self.history_list.setToolTip("History: click a result to preview it on the canvas")
        self.history_list.itemClicked.connect(self.on_history_clicked)
        layout.addWidget(self.history_list)
        self._history_keys: list[str] = []
        row = QHBoxLayout()
        self.apply_button = QPushButton("Apply", body)
        self.apply_button.setToolTip("Add the selected result as a layer")
        self.apply_button.clicked.connect(self.on_apply)
        self.discard_button = QPushButton("Discard", body)
        self.discard_button.setToolTip("Drop the selected result (the newest if none is selected) and its layer")
        self.discard_button.clicked.connect(self.on_discard)
        row.addWidget(self.apply_button)
        row.addWidget(self.discard_button)
        layout.addLayout(row)
        self.history_check = QCheckBox("Results to history only", body)
        self.history_check.setToolTip("On: results wait in the history to be previewed and applied. Off: each "
                                      "result becomes a layer at once (and is listed here)")
        layout.addWidget(self.history_check)
        layout.addStretch(1)

    def sizeHint(self) -> QtCore.QSize:  # noqa: N802 - Qt's name
        return QtCore.QSize(260, 420)

    # -- UI -> settings ---------------------------------------------------------------------------
    def read_settings(self) -> None:
        s = self.controller.settings
        s.model = self.model_combo.currentText()
        s.prompt = self.prompt_edit.toPlainText()
        self.generate_page.read_into(s)
        self.settings_dialog.read_into(s)
        s.keep_in_history = self.history_check.isChecked()
        self.fix_page.read_into(self.controller.fix)

    def _active_layer(self) -> Any:
        doc = self.controller.document()
        node = kritadoc.active_layer(doc) if doc is not None else None
        if node is None:
            self.controller.message = "Pick a layer in the Layers docker first."
            self.refresh()
        return node

    def load_styles(self, folder: Any = None) -> None:
        """Fill the style list from ``folder`` (default: ctrlgen's config folder, krita-styles/)."""
        from .client_import import config_dir

        self.styles, problems = load_styles(folder if folder is not None else styles_folder(config_dir()))
        combo = self.generate_page.style_combo
        keep = combo.currentText()
        combo.blockSignals(True)
        combo.clear()
        combo.addItem("No style")
        combo.addItems([style.name for style in self.styles])
        combo.setCurrentIndex(max(0, combo.findText(keep)))
        combo.blockSignals(False)
        self._style_changed(combo.currentIndex())
        if problems:
            self.controller.message = "Some styles could not be read: " + "; ".join(problems)

    def _style_changed(self, index: int) -> None:
        self.controller.style = self.styles[index - 1] if 0 < index <= len(self.styles) else None
        style = self.controller.style
        if style is not None and style.model:
            index = self.model_combo.findText(style.model)
            if index >= 0:
                self.model_combo.setCurrentIndex(index)

    def on_settings(self) -> None:
        self.settings_dialog.show()
        self.settings_dialog.raise_()

    def on_connect(self) -> None:
        self.controller.connect(self.url_edit.text().strip(), self.token_edit.text().strip())
        self.load_styles()
        self.refresh()

    def on_generate(self, require_selection: bool) -> None:
        self.read_settings()
        self.controller.generate(require_selection=require_selection)
        self.refresh()

    def on_detect(self, target: str) -> None:
        self.read_settings()
        self.controller.detect(target)
        self.refresh()

    def on_run_fix(self) -> None:
        self.controller.run_fix()
        self.refresh()

    def on_upscale(self) -> None:
        from .upscale import start_upscale

        self.read_settings()
        start_upscale(self.controller, self.upscale_page.read())
        self.refresh()

    def on_cancel_fix(self) -> None:
        self.controller.cancel_fix()
        self.refresh()

    def _workspace_changed(self, index: int) -> None:
        ident = self.workspace_combo.itemData(index)
        page = {"generate": 0, "fix": 1}.get(ident, 0)
        self.pages.setCurrentIndex(page)
        self.action_stack.setCurrentIndex(page)
        if ident == "upscale":
            self.pages.setCurrentWidget(self.upscale_page)
            self.action_stack.setCurrentWidget(self.upscale_row)
        if ident == "live":
            self.pages.setCurrentWidget(self.live_page)
            self.action_stack.setCurrentWidget(self.live_row)
        elif self.live.active:  # Live runs only while its workspace is shown
            self.live.stop()
        self.refresh()

    def show_workspace(self, ident: str) -> None:
        self.workspace_combo.setCurrentIndex(self.workspace_combo.findData(ident))

    def on_add_control(self) -> None:
        node = self._active_layer()
        if node is None:
            return
        models = matching_models(self.controller.capabilities, "controlnet", self.model_combo.currentText())
        self.controller.settings.controls.append(
            ControlLayer(kritadoc.node_id(node), node.name(), model=models[0] if models else ""))
        self.refresh()

    def on_add_reference(self) -> None:
        node = self._active_layer()
        if node is None:
            return
        models = matching_models(self.controller.capabilities, "ipadapter", self.model_combo.currentText())
        self.controller.settings.references.append(
            ReferenceLayer(kritadoc.node_id(node), node.name(), model=models[0] if models else REFERENCE_ONLY))
        self.refresh()

    def on_remove_layer(self, item: Any) -> None:
        s = self.controller.settings
        for listed in (s.controls, s.references):
            if any(x is item for x in listed):
                listed[:] = [x for x in listed if x is not item]
        self.refresh()

    def on_preview_control(self, control: ControlLayer) -> None:
        self.controller.preview_control(control)
        self.refresh()

    # -- history ----------------------------------------------------------------------------------
    def _history_items(self) -> list[Any]:
        doc = self.controller.document()
        return self.controller.history.of(doc) if doc is not None else []

    def _selected_history(self) -> Any:
        row = self.history_list.currentRow()
        items = self._history_items()
        return items[row] if 0 <= row < len(items) else None

    def on_history_clicked(self, _item: Any = None) -> None:
        chosen = self._selected_history()
        if chosen is not None:
            self.controller.history.preview(chosen)
        self.refresh()

    def on_apply(self) -> None:
        chosen = self._selected_history()
        if chosen is None:
            self.controller.message = "Click a result in the history first."
        else:
            self.controller.history.apply(chosen)
        self.refresh()

    def on_discard(self) -> None:
        chosen = self._selected_history()
        if chosen is not None:
            self.controller.history.discard(chosen)
        elif not self.controller.discard_last():
            self.controller.message = "No result to discard."
        self.refresh()

    def _show_history(self) -> None:
        items = self._history_items()
        keys = [f"{item.ident}:{item.applied}" for item in items]
        if keys == self._history_keys:
            return
        row = self.history_list.currentRow()
        self._history_keys = keys
        self.history_list.blockSignals(True)
        self.history_list.clear()
        for item in items:
            entry = QListWidgetItem(_thumbnail(item), item.label() + (" ✓" if item.applied else ""))
            entry.setToolTip(item.describe())
            self.history_list.addItem(entry)
        if 0 <= row < len(items):
            self.history_list.setCurrentRow(row)
        self.history_list.blockSignals(False)

    # -- controller -> UI ------------------------------------------------------------------------
    def _tick(self) -> None:
        if self.controller._polling or kritadoc.busy():  # inside a Krita call that runs events: leave Krita be
            return
        self.controller.poll()
        if self.live.tick():
            self.live_page.refresh()
            if self.live.message:
                self.message_label.setText(self.live.message)
                self.message_label.setVisible(True)
        self._ticks += 1
        if self._ticks % 10 == 0:  # twice a second: the selection may have changed
            self._label_action()

    def _label_action(self) -> None:
        doc = self.controller.document()
        try:
            selected = doc is not None and kritadoc.is_open(doc) and doc.selection() is not None
        except RuntimeError:
            selected = False
        strength = self.strength_spin.value()
        text = action_label(selected, strength, self.generate_page.mode_combo.currentData())
        if self.generate_button.text() != text:
            self.generate_button.setText(text)

    def refresh(self) -> None:
        c = self.controller
        status = c.status_text()
        self.status_label.setText(f"<span style='color:{STATUS_COLOURS.get(c.connection, '#888')}'>●</span>")
        self.status_label.setToolTip(status)
        self.settings_dialog.status_label.setText(status)
        caps = c.capabilities
        checkpoint = self.model_combo.currentText()
        _fill(self.model_combo, models_of(caps, "checkpoint"))
        if caps.get("samplers"):
            _fill(self.sampler_combo, list(caps["samplers"]))
        self.generate_page.sync_rows(
            c.settings, preprocessor_names(caps) if caps else ["none"],
            matching_models(caps, "controlnet", checkpoint),
            [*matching_models(caps, "ipadapter", checkpoint), REFERENCE_ONLY], self.on_remove_layer,
            self.on_preview_control)
        self.fix_page.fill(caps)
        self.upscale_page.fill(caps)
        pending = c.pending_fix is not None
        for button in (self.fix_faces_button, self.fix_hands_button):
            button.setVisible(not pending)
        for button in (self.run_fix_button, self.cancel_fix_button):
            button.setVisible(pending)
        self.fix_page.show_detections(c.pending_fix, max(120, self.body.width() - 8))
        if pending and self.workspace_combo.currentData() != "fix":
            self.show_workspace("fix")
        active = [entry.label() for entry in reversed(c.queue.entries)]
        _fill_list(self.queue_list, active)
        self.queue_list.setVisible(bool(active))
        self.progress_bar.setValue(int(c.queue.progress() * 1000))
        self.cancel_button.setEnabled(bool(c.queue.active()))
        self.message_label.setText(c.message)
        self.message_label.setVisible(bool(c.message))
        self._show_preview(c.preview)
        self._show_history()
        self._label_action()

    def fix_preview_image(self) -> Any:
        """The detections as drawn in the docker (a QImage), or None when no fix waits."""
        return self.fix_page.image

    def _show_preview(self, preview: tuple[int, bytes, int, int] | None) -> None:
        """The running job's latest preview picture, fitted to the docker's width; hidden when none."""
        if preview is None:
            if self._preview_shown is not None:
                self.preview_label.clear()
                self.preview_label.hide()
                self._preview_shown = None
            return
        key, png, step, total = preview
        if self._preview_shown == (key, step):
            return
        pixmap = QtGui.QPixmap()
        if not pixmap.loadFromData(png, "PNG"):
            return
        width = max(64, min(256, self.body.width() - 8))
        if pixmap.width() > width:
            pixmap = pixmap.scaledToWidth(width, Qt.TransformationMode.SmoothTransformation)
        self.preview_label.setPixmap(pixmap)
        self.preview_label.setToolTip(f"Preview at step {step}/{total}")
        self.preview_label.show()
        self._preview_shown = (key, step)


def _thumbnail(item: Any) -> Any:
    r = item.region
    if not item.bgra or len(item.bgra) < r.width * r.height * 4:
        return QtGui.QIcon()
    data = bytes(item.bgra)
    image = QtGui.QImage(data, r.width, r.height, r.width * 4, QtGui.QImage.Format.Format_ARGB32)
    scaled = image.scaled(THUMB, THUMB, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation)
    return QtGui.QIcon(QtGui.QPixmap.fromImage(scaled))


def _fill(combo: QComboBox, items: list[str]) -> None:
    current = [combo.itemText(i) for i in range(combo.count())]
    if current == list(items):
        return
    keep = combo.currentText()
    combo.blockSignals(True)
    combo.clear()
    combo.addItems(items)
    index = combo.findText(keep)
    if index >= 0:
        combo.setCurrentIndex(index)
    combo.blockSignals(False)


def _fill_list(widget: QListWidget, items: list[str]) -> None:
    current = [widget.item(i).text() for i in range(widget.count())]
    if current == items:
        return
    widget.blockSignals(True)
    widget.clear()
    widget.addItems(items)
    widget.blockSignals(False)


try:
    from krita import DockWidget
except ImportError:  # outside Krita: the panel still works, the docker class does not exist
    DockWidget = None

if DockWidget is not None:

    class CtrlgenDocker(DockWidget):
        """The docker Krita shows (Settings > Dockers > ctrlgen)."""

        def __init__(self) -> None:
            super().__init__()
            self.setWindowTitle("ctrlgen")
            self.panel = CtrlgenPanel(parent=self)
            self.setWidget(self.panel)
            # Connect at start so the lists fill when a server runs; a message says how otherwise.
            self.panel.on_connect()
            from krita import Krita

            # A saved document's history is written beside it (and first when it gets a file name).
            Krita.instance().notifier().imageSaved.connect(self._saved)

        def _saved(self, _filename: str) -> None:
            doc = self.panel.controller.document()
            if doc is not None:
                self.panel.controller.history.save(doc)

        def canvasChanged(self, canvas: Any) -> None:  # noqa: N802 - Krita's API name
            self.panel.refresh()
