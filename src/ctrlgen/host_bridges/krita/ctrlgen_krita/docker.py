"""The ctrlgen docker: widgets bound to a :class:`~.controller.Controller`."""

from __future__ import annotations

from typing import Any

from . import kritadoc
from .controller import Controller
from .logic import (
    NO_PREPROCESSOR,
    REFERENCE_ONLY,
    ControlLayer,
    ReferenceLayer,
    matching_models,
    models_of,
    preprocessor_names,
)
from .qt import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    Qt,
    QtGui,
    QTimer,
    QVBoxLayout,
    QWidget,
)

DEFAULT_SAMPLERS = ["Euler a", "Euler", "DPM++ 2M", "DPM++ 2M Karras", "DDIM", "UniPC"]


def _krita_document() -> Any:
    from krita import Krita

    return Krita.instance().activeDocument()


class CtrlgenPanel(QWidget):
    """Everything the docker shows. Usable on its own (tests, screenshots) with any document getter."""

    def __init__(self, controller: Controller | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.controller = controller or Controller(_krita_document)
        self.controller.on_change = self.refresh
        self._building = False
        self._build()
        self.timer = QTimer(self)
        self.timer.setInterval(50)
        self.timer.timeout.connect(self.controller.poll)
        self.timer.start()
        self.refresh()

    # -- layout -------------------------------------------------------------------------------
    def _build(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = QScrollArea(self)
        scroll.setWidgetResizable(True)
        body = self.body = QWidget(scroll)
        layout = QVBoxLayout(body)
        scroll.setWidget(body)
        outer.addWidget(scroll)

        server = QGroupBox("Server", body)
        form = QFormLayout(server)
        self.status_label = QLabel("Not connected", server)
        self.status_label.setWordWrap(True)
        form.addRow("Status", self.status_label)
        self.url_edit = QLineEdit(server)
        self.url_edit.setPlaceholderText("from ctrlgen's config folder")
        form.addRow("URL", self.url_edit)
        self.token_edit = QLineEdit(server)
        self.token_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.token_edit.setPlaceholderText("from ctrlgen's config folder")
        form.addRow("Token", self.token_edit)
        self.connect_button = QPushButton("Connect", server)
        self.connect_button.clicked.connect(self.on_connect)
        form.addRow(self.connect_button)
        layout.addWidget(server)

        gen = QGroupBox("Generate", body)
        form = QFormLayout(gen)
        self.model_combo = QComboBox(gen)
        form.addRow("Model", self.model_combo)
        self.prompt_edit = QPlainTextEdit(gen)
        self.prompt_edit.setPlaceholderText("Describe what to paint")
        self.prompt_edit.setFixedHeight(60)
        form.addRow("Prompt", self.prompt_edit)
        self.negative_edit = QPlainTextEdit(gen)
        self.negative_edit.setPlaceholderText("What to avoid")
        self.negative_edit.setFixedHeight(40)
        form.addRow("Negative prompt", self.negative_edit)
        self.strength_spin = QSpinBox(gen)
        self.strength_spin.setRange(1, 100)
        self.strength_spin.setSuffix(" %")
        self.strength_spin.setValue(100)
        self.strength_spin.setToolTip("100 %: paint anew. Below: refine what is there (img2img).")
        form.addRow("Strength", self.strength_spin)
        self.seed_spin = QSpinBox(gen)
        self.seed_spin.setRange(-1, 2**31 - 1)
        self.seed_spin.setValue(-1)
        self.seed_spin.setSpecialValueText("random")
        form.addRow("Seed", self.seed_spin)
        layout.addWidget(gen)

        self.advanced_box = QGroupBox("Advanced", body)
        self.advanced_box.setCheckable(True)
        self.advanced_box.setChecked(False)
        form = QFormLayout(self.advanced_box)
        self.steps_spin = QSpinBox(self.advanced_box)
        self.steps_spin.setRange(1, 150)
        self.steps_spin.setValue(20)
        form.addRow("Steps", self.steps_spin)
        self.cfg_spin = QDoubleSpinBox(self.advanced_box)
        self.cfg_spin.setRange(0.0, 30.0)
        self.cfg_spin.setSingleStep(0.5)
        self.cfg_spin.setValue(7.0)
        form.addRow("CFG scale", self.cfg_spin)
        self.sampler_combo = QComboBox(self.advanced_box)
        self.sampler_combo.addItems(DEFAULT_SAMPLERS)
        form.addRow("Sampler", self.sampler_combo)
        self.grow_spin = QSpinBox(self.advanced_box)
        self.grow_spin.setRange(-256, 256)
        self.grow_spin.setSuffix(" px")
        form.addRow("Grow selection", self.grow_spin)
        self.feather_spin = QSpinBox(self.advanced_box)
        self.feather_spin.setRange(0, 256)
        self.feather_spin.setValue(8)
        self.feather_spin.setSuffix(" px")
        form.addRow("Feather selection", self.feather_spin)
        self.context_spin = QSpinBox(self.advanced_box)
        self.context_spin.setRange(0, 1024)
        self.context_spin.setValue(32)
        self.context_spin.setSuffix(" px")
        form.addRow("Context around selection", self.context_spin)
        self.source_combo = QComboBox(self.advanced_box)
        self.source_combo.addItem("Visible image", "visible")
        self.source_combo.addItem("Active layer", "active_layer")
        form.addRow("Input", self.source_combo)
        self.scale_check = QCheckBox("Generate at the model's resolution", self.advanced_box)
        self.scale_check.setChecked(True)
        self.scale_check.setToolTip("Big canvases are generated at the model's size and scaled up; small "
                                    "selections are repainted at it and scaled down. Off: the area's own size.")
        form.addRow("Resolution", self.scale_check)
        self.preview_check = QCheckBox("Show previews while generating", self.advanced_box)
        self.preview_check.setChecked(True)
        self.preview_check.setToolTip("The server sends a small picture of the image every few steps")
        form.addRow("Live preview", self.preview_check)
        self.advanced_box.toggled.connect(self._show_advanced)
        self._show_advanced(False)
        layout.addWidget(self.advanced_box)

        controls = QGroupBox("Control layers", body)
        box = QVBoxLayout(controls)
        self.control_list = QListWidget(controls)
        self.control_list.setMaximumHeight(70)
        self.control_list.currentRowChanged.connect(self._load_control)
        box.addWidget(self.control_list)
        row = QHBoxLayout()
        self.add_control_button = QPushButton("Add active layer", controls)
        self.add_control_button.clicked.connect(self.on_add_control)
        self.remove_control_button = QPushButton("Remove", controls)
        self.remove_control_button.clicked.connect(self.on_remove_control)
        row.addWidget(self.add_control_button)
        row.addWidget(self.remove_control_button)
        box.addLayout(row)
        form = QFormLayout()
        self.preprocessor_combo = QComboBox(controls)
        self.preprocessor_combo.setToolTip(f"'{NO_PREPROCESSOR}': the layer already is a control map")
        form.addRow("Preprocessor", self.preprocessor_combo)
        self.control_model_combo = QComboBox(controls)
        form.addRow("ControlNet", self.control_model_combo)
        self.control_strength_spin = self._fraction_spin(controls, 1.0, 2.0)
        form.addRow("Strength", self.control_strength_spin)
        self.control_start_spin = self._fraction_spin(controls, 0.0, 1.0)
        form.addRow("Start", self.control_start_spin)
        self.control_end_spin = self._fraction_spin(controls, 1.0, 1.0)
        form.addRow("End", self.control_end_spin)
        self.control_enabled_check = QCheckBox("Use in generation", controls)
        self.control_enabled_check.setChecked(True)
        form.addRow(self.control_enabled_check)
        box.addLayout(form)
        self.preview_button = QPushButton("Preview control map", controls)
        self.preview_button.clicked.connect(self.on_preview_control)
        box.addWidget(self.preview_button)
        for widget in (self.preprocessor_combo, self.control_model_combo):
            widget.currentIndexChanged.connect(self._store_control)
        for widget in (self.control_strength_spin, self.control_start_spin, self.control_end_spin):
            widget.valueChanged.connect(self._store_control)
        self.control_enabled_check.toggled.connect(self._store_control)
        layout.addWidget(controls)

        refs = QGroupBox("Reference layers", body)
        box = QVBoxLayout(refs)
        self.reference_list = QListWidget(refs)
        self.reference_list.setMaximumHeight(50)
        self.reference_list.currentRowChanged.connect(self._load_reference)
        box.addWidget(self.reference_list)
        row = QHBoxLayout()
        self.add_reference_button = QPushButton("Add active layer", refs)
        self.add_reference_button.clicked.connect(self.on_add_reference)
        self.remove_reference_button = QPushButton("Remove", refs)
        self.remove_reference_button.clicked.connect(self.on_remove_reference)
        row.addWidget(self.add_reference_button)
        row.addWidget(self.remove_reference_button)
        box.addLayout(row)
        form = QFormLayout()
        self.reference_model_combo = QComboBox(refs)
        form.addRow("Reference by", self.reference_model_combo)
        self.reference_scale_spin = self._fraction_spin(refs, 0.6, 2.0)
        form.addRow("Scale", self.reference_scale_spin)
        box.addLayout(form)
        self.reference_model_combo.currentIndexChanged.connect(self._store_reference)
        self.reference_scale_spin.valueChanged.connect(self._store_reference)
        layout.addWidget(refs)

        row = QHBoxLayout()
        self.generate_button = QPushButton("Generate", body)
        self.generate_button.setToolTip("Inpaints the selection if there is one, else the whole canvas")
        self.generate_button.clicked.connect(lambda: self.on_generate(False))
        self.inpaint_button = QPushButton("Inpaint", body)
        self.inpaint_button.setToolTip("Repaint the selection")
        self.inpaint_button.clicked.connect(lambda: self.on_generate(True))
        self.cancel_button = QPushButton("Cancel", body)
        self.cancel_button.clicked.connect(lambda: self.controller.cancel())
        row.addWidget(self.generate_button)
        row.addWidget(self.inpaint_button)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        self.progress_bar = QProgressBar(body)
        self.progress_bar.setRange(0, 1000)
        layout.addWidget(self.progress_bar)
        self.preview_label = QLabel(body)
        self.preview_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.preview_label.hide()
        self._preview_shown: tuple[int, int] | None = None  # (key, step) on the label
        layout.addWidget(self.preview_label)
        self.queue_list = QListWidget(body)
        self.queue_list.setMaximumHeight(80)
        layout.addWidget(QLabel("Queue", body))
        layout.addWidget(self.queue_list)
        self.discard_button = QPushButton("Discard last result", body)
        self.discard_button.clicked.connect(self.on_discard)
        layout.addWidget(self.discard_button)
        self.message_label = QLabel("", body)
        self.message_label.setWordWrap(True)
        self.message_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.message_label)
        layout.addStretch(1)

    def _fraction_spin(self, parent: QWidget, value: float, maximum: float) -> QDoubleSpinBox:
        spin = QDoubleSpinBox(parent)
        spin.setRange(0.0, maximum)
        spin.setSingleStep(0.05)
        spin.setValue(value)
        return spin

    def _show_advanced(self, shown: bool) -> None:
        for child in self.advanced_box.findChildren(QWidget):
            child.setVisible(shown)
        # Folded: only the check box's title row stays.
        self.advanced_box.setMaximumHeight(16777215 if shown else self.advanced_box.fontMetrics().height() + 8)

    # -- UI -> settings ---------------------------------------------------------------------------
    def read_settings(self) -> None:
        s = self.controller.settings
        s.model = self.model_combo.currentText()
        s.prompt = self.prompt_edit.toPlainText()
        s.negative_prompt = self.negative_edit.toPlainText()
        s.strength = self.strength_spin.value() / 100.0
        s.seed = self.seed_spin.value()
        s.steps = self.steps_spin.value()
        s.cfg_scale = self.cfg_spin.value()
        s.sampler = self.sampler_combo.currentText()
        s.grow_px = self.grow_spin.value()
        s.feather_px = self.feather_spin.value()
        s.context_px = self.context_spin.value()
        s.source = self.source_combo.currentData() or "visible"
        s.scale_to_model = self.scale_check.isChecked()
        s.live_preview = self.preview_check.isChecked()

    def _active_layer(self) -> Any:
        doc = self.controller.document()
        node = doc.activeNode() if doc is not None else None
        if node is None:
            self.controller.message = "Pick a layer in the Layers docker first."
            self.refresh()
        return node

    def on_connect(self) -> None:
        self.controller.connect(self.url_edit.text().strip(), self.token_edit.text().strip())
        self.refresh()

    def on_generate(self, require_selection: bool) -> None:
        self.read_settings()
        self.controller.generate(require_selection=require_selection)
        self.refresh()

    def on_discard(self) -> None:
        if not self.controller.discard_last():
            self.controller.message = "No result layer to discard."
        self.refresh()

    def on_add_control(self) -> None:
        node = self._active_layer()
        if node is None:
            return
        caps = self.controller.capabilities
        models = matching_models(caps, "controlnet", self.model_combo.currentText())
        control = ControlLayer(kritadoc.node_id(node), node.name(), model=models[0] if models else "")
        self.controller.settings.controls.append(control)
        self.refresh()
        self.control_list.setCurrentRow(len(self.controller.settings.controls) - 1)

    def on_remove_control(self) -> None:
        row = self.control_list.currentRow()
        if 0 <= row < len(self.controller.settings.controls):
            del self.controller.settings.controls[row]
            self.refresh()

    def on_preview_control(self) -> None:
        row = self.control_list.currentRow()
        controls = self.controller.settings.controls
        if not 0 <= row < len(controls):
            self.controller.message = "Add a control layer first (select it in Layers, then 'Add active layer')."
        else:
            self.controller.preview_control(controls[row])
        self.refresh()

    def on_add_reference(self) -> None:
        node = self._active_layer()
        if node is None:
            return
        models = matching_models(self.controller.capabilities, "ipadapter", self.model_combo.currentText())
        self.controller.settings.references.append(
            ReferenceLayer(kritadoc.node_id(node), node.name(), model=models[0] if models else REFERENCE_ONLY))
        self.refresh()
        self.reference_list.setCurrentRow(len(self.controller.settings.references) - 1)

    def on_remove_reference(self) -> None:
        row = self.reference_list.currentRow()
        if 0 <= row < len(self.controller.settings.references):
            del self.controller.settings.references[row]
            self.refresh()

    def _load_control(self, row: int) -> None:
        controls = self.controller.settings.controls
        if not 0 <= row < len(controls):
            return
        control = controls[row]
        self._building = True
        try:
            _select(self.preprocessor_combo, control.preprocessor)
            _select(self.control_model_combo, control.model)
            self.control_strength_spin.setValue(control.strength)
            self.control_start_spin.setValue(control.start)
            self.control_end_spin.setValue(control.end)
            self.control_enabled_check.setChecked(control.enabled)
        finally:
            self._building = False

    def _store_control(self, *_: Any) -> None:
        row = self.control_list.currentRow()
        controls = self.controller.settings.controls
        if self._building or not 0 <= row < len(controls):
            return
        control = controls[row]
        control.preprocessor = self.preprocessor_combo.currentText() or NO_PREPROCESSOR
        control.model = self.control_model_combo.currentText()
        control.strength = self.control_strength_spin.value()
        control.start = self.control_start_spin.value()
        control.end = self.control_end_spin.value()
        control.enabled = self.control_enabled_check.isChecked()
        self.control_list.item(row).setText(_control_label(control))

    def _load_reference(self, row: int) -> None:
        refs = self.controller.settings.references
        if not 0 <= row < len(refs):
            return
        self._building = True
        try:
            _select(self.reference_model_combo, refs[row].model)
            self.reference_scale_spin.setValue(refs[row].scale)
        finally:
            self._building = False

    def _store_reference(self, *_: Any) -> None:
        row = self.reference_list.currentRow()
        refs = self.controller.settings.references
        if self._building or not 0 <= row < len(refs):
            return
        refs[row].model = self.reference_model_combo.currentText()
        refs[row].scale = self.reference_scale_spin.value()

    # -- controller -> UI ------------------------------------------------------------------------
    def refresh(self) -> None:
        c = self.controller
        self._building = True
        try:
            status = {"connected": f"Connected to {c.url}", "connecting": "Connecting…",
                      "error": "Not connected", "disconnected": "Not connected"}[c.connection]
            self.status_label.setText(status)
            caps = c.capabilities
            _fill(self.model_combo, models_of(caps, "checkpoint"))
            _fill(self.preprocessor_combo, preprocessor_names(caps) if caps else [NO_PREPROCESSOR])
            _fill(self.control_model_combo, matching_models(caps, "controlnet", self.model_combo.currentText()))
            _fill(self.reference_model_combo,
                  [*matching_models(caps, "ipadapter", self.model_combo.currentText()), REFERENCE_ONLY])
            if caps.get("samplers"):
                _fill(self.sampler_combo, list(caps["samplers"]))
            _fill_list(self.control_list, [_control_label(x) for x in c.settings.controls])
            _fill_list(self.reference_list, [f"{r.layer_name} ({r.scale:.2f})" for r in c.settings.references])
            _fill_list(self.queue_list, [entry.label() for entry in reversed(c.queue.entries)])
            self.progress_bar.setValue(int(c.queue.progress() * 1000))
            self.cancel_button.setEnabled(bool(c.queue.active()))
            self.message_label.setText(c.message)
            self._show_preview(c.preview)
        finally:
            self._building = False
        self._load_control(self.control_list.currentRow())
        self._load_reference(self.reference_list.currentRow())

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
        width = max(64, min(256, self.preview_label.width() or 256))
        if pixmap.width() > width:
            pixmap = pixmap.scaledToWidth(width, Qt.TransformationMode.SmoothTransformation)
        self.preview_label.setPixmap(pixmap)
        self.preview_label.setToolTip(f"Preview at step {step}/{total}")
        self.preview_label.show()
        self._preview_shown = (key, step)


def _control_label(control: ControlLayer) -> str:
    state = "" if control.enabled else " [off]"
    return f"{control.layer_name}: {control.preprocessor}, {control.strength:.2f}{state}"


def _select(combo: QComboBox, text: str) -> None:
    index = combo.findText(text)
    if index >= 0:
        combo.setCurrentIndex(index)


def _fill(combo: QComboBox, items: list[str]) -> None:
    current = [combo.itemText(i) for i in range(combo.count())]
    if current == list(items):
        return
    keep = combo.currentText()
    combo.blockSignals(True)
    combo.clear()
    combo.addItems(items)
    _select(combo, keep)
    combo.blockSignals(False)


def _fill_list(widget: QListWidget, items: list[str]) -> None:
    current = [widget.item(i).text() for i in range(widget.count())]
    if current == items:
        return
    row = widget.currentRow()
    widget.blockSignals(True)
    widget.clear()
    widget.addItems(items)
    if 0 <= row < len(items):
        widget.setCurrentRow(row)
    elif items:
        widget.setCurrentRow(len(items) - 1)
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

        def canvasChanged(self, canvas: Any) -> None:  # noqa: N802 - Krita's API name
            self.panel.refresh()
