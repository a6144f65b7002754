"""The docker's workspace pages: Generate (options, control and reference layers, regions),
Fix (faces / hands, the detections drawn before anything is repainted) and Upscale."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .fixing import FixSettings, detectors_for
from .layer_rows import ControlRow, ReferenceRow, fill_combo, fraction_spin
from .logic import (
    SELECTION_MODE_TIPS,
    SELECTION_MODES,
    UPSCALE_FACTORS,
    Settings,
    UpscaleSettings,
    upscalers_of,
)
from .qt import (
    QComboBox,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    Qt,
    QtGui,
    QVBoxLayout,
    QWidget,
)


def compact(combo: QComboBox, letters: int = 6) -> QComboBox:
    """A combo that does not widen the docker to its longest item (the list still shows it whole)."""
    combo.setMinimumContentsLength(letters)
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    return combo


def percent_spin(parent: QWidget, value: int, low: int, tooltip: str) -> QSpinBox:
    spin = QSpinBox(parent)
    spin.setRange(low, 100)
    spin.setSuffix(" %")
    spin.setValue(value)
    spin.setToolTip(tooltip)
    return spin


STRENGTH_TIP = ("Strength: how much of what is there changes. 100 %: paint anew; lower keeps the composition "
                "and refines it (the whole canvas, or the selection)")


class GeneratePage(QWidget):
    """Negative prompt, strength, seed, what a selection means, batch, and the layer rows."""

    def __init__(self, on_add_control: Callable[[], None], on_add_reference: Callable[[], None],
                 parent: QWidget | None = None):
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(3)
        self.negative_edit = QLineEdit(self)
        self.negative_edit.setPlaceholderText("Negative prompt: what to avoid")
        self.negative_edit.setToolTip("What to avoid (A1111 syntax)")
        layout.addWidget(self.negative_edit)
        grid = QGridLayout()
        grid.setHorizontalSpacing(4)
        grid.setVerticalSpacing(3)
        self.strength_spin = percent_spin(self, 100, 1, STRENGTH_TIP)
        self.seed_spin = QSpinBox(self)
        self.seed_spin.setRange(-1, 2**31 - 1)
        self.seed_spin.setValue(-1)
        self.seed_spin.setSpecialValueText("random")
        self.seed_spin.setToolTip("Seed: random, or a number to repeat a result (each result's seed is in the "
                                  "history and the layer name)")
        self.mode_combo = compact(QComboBox(self))
        for index, (mode, text) in enumerate(SELECTION_MODES.items()):
            self.mode_combo.addItem(text, mode)
            self.mode_combo.setItemData(index, SELECTION_MODE_TIPS[mode], Qt.ItemDataRole.ToolTipRole)
        self.mode_combo.setToolTip("Selection mode, with a selection: Fill, Expand, Add content, Remove content or "
                                   "Replace background (hover each for what it does)")
        self.mode_combo.currentIndexChanged.connect(self._mode_tip)
        self.batch_spin = QSpinBox(self)
        self.batch_spin.setRange(1, 16)
        self.batch_spin.setPrefix("Batch × ")
        self.batch_spin.setToolTip("Batch: how many results one press makes (shown together in the history)")
        # Named inside the boxes (prefixes) rather than by labels beside them: 260 px is narrow.
        self.strength_spin.setPrefix("Strength ")
        self.seed_spin.setPrefix("Seed ")
        self.seed_spin.setSpecialValueText("Seed: random")
        for widget in (self.strength_spin, self.seed_spin, self.mode_combo, self.batch_spin):
            widget.setMinimumWidth(80)  # below their size hints (seed's 10 digits): they shrink first
        grid.addWidget(self.strength_spin, 0, 0)
        grid.addWidget(self.seed_spin, 0, 1)
        grid.addWidget(self.mode_combo, 1, 0)
        grid.addWidget(self.batch_spin, 1, 1)
        self.style_combo = compact(QComboBox(self), 8)
        self.style_combo.setToolTip("Style: a preset of checkpoint, LoRAs, sampler, steps, CFG and prompt "
                                    "templates (JSON files in ctrlgen's config folder, krita-styles/)")
        self.style_combo.addItem("No style")
        grid.addWidget(self.style_combo, 2, 0, 1, 2)
        self.regions_combo = GroupCombo(self)
        self.regions_combo.setToolTip("Regions: a group layer whose child layers are regions — each child's "
                                      "painted pixels (× its opacity) are where its prompt (the layer's name, or "
                                      "the one typed below) applies; the prompt above is for the whole picture. "
                                      "A group named 'Regions' is chosen by itself")
        self.regions_combo.activated.connect(self._group_chosen)
        grid.addWidget(self.regions_combo, 3, 0, 1, 2)
        grid.setColumnStretch(0, 1)
        grid.setColumnStretch(1, 1)
        layout.addLayout(grid)
        self.region_box = QVBoxLayout()
        self.region_box.setSpacing(2)
        layout.addLayout(self.region_box)
        self.region_rows: list[RegionRow] = []
        self.document: Callable[[], Any] = lambda: None  # the docker sets its document getter
        self.settings: Settings | None = None
        self._chosen_group: str | None = None  # None: not chosen by the user (a "Regions" group is used)

        row = QHBoxLayout()
        self.add_control_button = QPushButton("+ Control", self)
        self.add_control_button.setToolTip("Steer with the active layer (pose, edges, depth, …): add it as a "
                                           "control layer")
        self.add_control_button.clicked.connect(on_add_control)
        self.add_reference_button = QPushButton("+ Reference", self)
        self.add_reference_button.setToolTip("Use the active layer as an image prompt (style, subject, face)")
        self.add_reference_button.clicked.connect(on_add_reference)
        row.addWidget(self.add_control_button)
        row.addWidget(self.add_reference_button)
        layout.addLayout(row)
        self.rows_box = QVBoxLayout()
        self.rows_box.setSpacing(2)
        layout.addLayout(self.rows_box)
        self.rows: list[Any] = []

    def read_into(self, s: Settings) -> None:
        s.negative_prompt = self.negative_edit.text()
        s.strength = self.strength_spin.value() / 100.0
        s.seed = self.seed_spin.value()
        s.selection_mode = self.mode_combo.currentData() or "fill"
        s.batch_size = self.batch_spin.value()
        self.settings = s
        self.sync_regions(s)
        s.regions_group = self.regions_combo.currentData() or ""

    def _mode_tip(self, index: int) -> None:
        mode = self.mode_combo.itemData(index)
        if mode in SELECTION_MODE_TIPS:
            self.mode_combo.setToolTip(SELECTION_MODE_TIPS[mode])

    def _group_chosen(self, index: int) -> None:
        self._chosen_group = self.regions_combo.itemData(index) or ""
        if self.settings is not None:
            self.settings.regions_group = self._chosen_group
            self.sync_regions(self.settings)

    def sync_regions(self, settings: Settings) -> None:
        """The regions group choice and one prompt row per child layer, from the active document."""
        from . import kritadoc

        doc = self.document()
        if not kritadoc.is_open(doc):
            doc = None
        try:
            groups = [(kritadoc.node_id(g), g.name()) for g in kritadoc.group_layers(doc)] if doc is not None else []
        except (RuntimeError, AttributeError):  # closed meanwhile
            doc, groups = None, []
        self.regions_combo.groups = groups
        wanted = self._chosen_group
        if wanted is None:  # never chosen: the group named "Regions", if any
            wanted = next((ident for ident, name in groups if name.strip().lower() == "regions"), "")
        if wanted and wanted not in [ident for ident, _ in groups]:
            wanted = ""
        self.regions_combo.refill(wanted)
        settings.regions_group = wanted
        children = []
        if wanted and doc is not None:
            try:
                children = [(kritadoc.node_id(c), c.name()) for c in kritadoc.region_layers(doc, wanted)]
            except (RuntimeError, AttributeError):  # closed meanwhile
                children = []
        if [(row.layer_id, row.layer_name) for row in self.region_rows] != children:
            for row in self.region_rows:
                row.setParent(None)
                row.deleteLater()
            self.region_rows = [RegionRow(ident, name, settings, self) for ident, name in children]
            for row in self.region_rows:
                self.region_box.addWidget(row)
        for row in self.region_rows:
            row.settings = settings

    def sync_rows(self, settings: Settings, preprocessors: list[str], control_models: list[str],
                  reference_models: list[str], on_remove: Callable[[Any], None],
                  on_preview: Callable[[Any], None]) -> None:
        """One row per control and reference layer in ``settings`` (rows are rebuilt only when
        the list changed, so editing a row never loses focus), and the regions' rows."""
        self.settings = settings
        self.sync_regions(settings)
        wanted = [*settings.controls, *settings.references]
        if len(self.rows) != len(wanted) or any(row.item is not item for row, item in zip(self.rows, wanted,
                                                                                          strict=True)):
            for row in self.rows:
                row.setParent(None)
                row.deleteLater()
            self.rows = []
            for item in settings.controls:
                row = ControlRow(item, on_remove, self)
                row.preview_button.clicked.connect(lambda _=False, item=item: on_preview(item))
                self.rows.append(row)
            for item in settings.references:
                self.rows.append(ReferenceRow(item, on_remove, self))
            for row in self.rows:
                self.rows_box.addWidget(row)
        for row in self.rows:
            if isinstance(row, ControlRow):
                row.fill(preprocessors, control_models)
            else:
                row.fill(reference_models)


class GroupCombo(QComboBox):
    """The regions group: "No regions" or one of the document's group layers, listed anew each
    time the list opens (layers come and go)."""

    NONE = "No regions"

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        compact(self, 8)
        self.groups: list[tuple[str, str]] = []  # (layer id, name)
        self.on_open: Callable[[], None] = lambda: None
        self.refill("")

    def refill(self, current: str) -> None:
        items = [("", self.NONE)] + [(ident, f"Regions: {name}") for ident, name in self.groups]
        have = [(self.itemData(i) or "", self.itemText(i)) for i in range(self.count())]
        self.blockSignals(True)
        if have != items:
            self.clear()
            for ident, text in items:
                self.addItem(text, ident)
        self.setCurrentIndex(max(0, self.findData(current)) if current else 0)
        self.blockSignals(False)

    def showPopup(self) -> None:  # noqa: N802 - Qt's name
        parent = self.parent()
        if isinstance(parent, GeneratePage) and parent.settings is not None:
            parent.sync_regions(parent.settings)
        super().showPopup()


class RegionRow(QFrame):
    """One region: the child layer's name and its prompt (empty: the name)."""

    def __init__(self, layer_id: str, layer_name: str, settings: Settings, parent: QWidget | None = None):
        super().__init__(parent)
        self.layer_id, self.layer_name, self.settings = layer_id, layer_name, settings
        self.setFrameShape(QFrame.Shape.StyledPanel)
        row = QHBoxLayout(self)
        row.setContentsMargins(3, 2, 3, 2)
        row.setSpacing(3)
        self.name_label = QLabel(layer_name, self)
        self.name_label.setToolTip(f"Region layer {layer_name!r}: where its pixels are (× its opacity), its prompt "
                                   "applies; hidden layers are left out")
        self.name_label.setMinimumWidth(30)
        self.prompt_edit = QLineEdit(self)
        self.prompt_edit.setPlaceholderText(f"prompt: {layer_name}")
        self.prompt_edit.setToolTip("This region's prompt; empty: the layer's name")
        self.prompt_edit.setText(settings.region_prompts.get(layer_id, ""))
        self.prompt_edit.textChanged.connect(self._store)
        row.addWidget(self.name_label)
        row.addWidget(self.prompt_edit, 1)

    def _store(self, text: str) -> None:
        self.settings.region_prompts[self.layer_id] = text


class FixPage(QWidget):
    """Detectors, the fix prompt and strength, and the picture of what was found."""

    BOX_COLOUR = (255, 40, 200)  # magenta outlines: rare in photos

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(3)
        grid = QGridLayout()
        grid.setHorizontalSpacing(4)
        self.face_combo = compact(QComboBox(self))
        self.face_combo.setToolTip("The detector Fix faces uses (the server's face detectors)")
        self.hand_combo = compact(QComboBox(self))
        self.hand_combo.setToolTip("The detector Fix hands uses (the server's hand detectors)")
        self.strength_spin = percent_spin(self, 40, 1, "Strength: how much of each face or hand is repainted "
                                          "(the pass's denoise; 40 % keeps the likeness)")
        self.confidence_spin = fraction_spin(self, 0.3, 1.0, "Confidence: detections below it are ignored")
        for row, (label, widget) in enumerate((("Faces", self.face_combo), ("Hands", self.hand_combo))):
            grid.addWidget(QLabel(label, self), row, 0)
            grid.addWidget(widget, row, 1, 1, 3)
        grid.addWidget(QLabel("Strength", self), 2, 0)
        grid.addWidget(self.strength_spin, 2, 1)
        grid.addWidget(QLabel("Min. conf.", self), 2, 2)
        grid.addWidget(self.confidence_spin, 2, 3)
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(3, 1)
        layout.addLayout(grid)
        self.prompt_edit = QLineEdit(self)
        self.prompt_edit.setPlaceholderText("Fix prompt (empty: the prompt above)")
        self.prompt_edit.setToolTip("What each face or hand is repainted as. Empty: the prompt above; [PROMPT] "
                                    "inserts it; [SEP] separates prompts per detection; [SKIP] leaves one alone")
        layout.addWidget(self.prompt_edit)
        self.detections_label = QLabel(self)
        self.detections_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.detections_label.setToolTip("What Run fix will repaint, outlined")
        self.detections_label.hide()
        layout.addWidget(self.detections_label)
        self.image: Any = None  # the QImage shown, boxes drawn (None when nothing waits)
        self._shown: Any = None

    def read_into(self, fix: FixSettings) -> None:
        fix.face_detector = self.face_combo.currentText()
        fix.hand_detector = self.hand_combo.currentText()
        fix.prompt = self.prompt_edit.text()
        fix.strength = self.strength_spin.value() / 100.0
        fix.confidence = self.confidence_spin.value()

    def fill(self, capabilities: dict[str, Any]) -> None:
        fill_combo(self.face_combo, detectors_for(capabilities, "faces"))
        fill_combo(self.hand_combo, detectors_for(capabilities, "hands"))

    def show_detections(self, pending: Any, width: int) -> None:
        """Draw the pending fix's boxes on its picture (scaled to ``width``); hide when none."""
        if pending is None:
            if self._shown is not None:
                self.detections_label.clear()
                self.detections_label.hide()
                self.image, self._shown = None, None
            return
        if self._shown is pending:
            return
        region = pending.capture.region
        data = bytes(pending.capture.image)
        picture = QtGui.QImage(data, region.width, region.height, region.width * 4,
                               QtGui.QImage.Format.Format_ARGB32).copy()  # BGRA in memory, as Krita's
        scale = min(1.0, width / max(1, region.width))
        shown = picture.scaled(max(1, int(region.width * scale)), max(1, int(region.height * scale)),
                               Qt.AspectRatioMode.IgnoreAspectRatio, Qt.TransformationMode.SmoothTransformation)
        shown = shown.convertToFormat(QtGui.QImage.Format.Format_RGBA8888)
        painter = QtGui.QPainter(shown)
        pen = QtGui.QPen(QtGui.QColor(*self.BOX_COLOUR))
        pen.setWidth(2)
        painter.setPen(pen)
        for x0, y0, x1, y1 in pending.boxes:
            painter.drawRect(int(x0 * scale), int(y0 * scale), max(1, int((x1 - x0) * scale)),
                             max(1, int((y1 - y0) * scale)))
        painter.end()
        self.image, self._shown = shown, pending
        self.detections_label.setPixmap(QtGui.QPixmap.fromImage(shown))
        self.detections_label.show()


class UpscalePage(QWidget):
    """Target size (a factor or pixels), the upscaler, the refine's tiles and strength, its prompt."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(3)
        grid = QGridLayout()
        grid.setHorizontalSpacing(4)
        grid.setVerticalSpacing(3)
        self.size_combo = compact(QComboBox(self))
        for factor in UPSCALE_FACTORS:
            self.size_combo.addItem(f"× {factor:g}", factor)
        self.size_combo.addItem("Size in pixels", 0.0)
        self.size_combo.setCurrentIndex(list(UPSCALE_FACTORS).index(2.0))
        self.size_combo.setToolTip("Target size: the document enlarged × 1.5, × 2 or × 4, or to the pixel size "
                                   "beside")
        self.width_spin = QSpinBox(self)
        self.height_spin = QSpinBox(self)
        for spin, what in ((self.width_spin, "width"), (self.height_spin, "height")):
            spin.setRange(64, 4096)
            spin.setValue(1024)
            spin.setSuffix(" px")
            spin.setToolTip(f"Target {what} in pixels (with 'Size in pixels')")
            spin.setMinimumWidth(60)
        self.upscaler_combo = compact(QComboBox(self), 8)
        self.upscaler_combo.setToolTip("Upscaler: a model (ESRGAN, Real-ESRGAN, …) from the server's upscale_models "
                                       "folders, or a plain resampler (lanczos, …)")
        self.tile_spin = QSpinBox(self)
        self.tile_spin.setRange(0, 2048)
        self.tile_spin.setSingleStep(64)
        self.tile_spin.setSpecialValueText("Tile: model's")
        self.tile_spin.setPrefix("Tile ")
        self.tile_spin.setSuffix(" px")
        self.tile_spin.setToolTip("Tile size of the refine, a multiple of 64 (model's: 512 SD1.5, 1024 SDXL)")
        self.overlap_spin = QSpinBox(self)
        self.overlap_spin.setRange(0, 512)
        self.overlap_spin.setSingleStep(8)
        self.overlap_spin.setValue(64)
        self.overlap_spin.setPrefix("Overlap ")
        self.overlap_spin.setSuffix(" px")
        self.overlap_spin.setToolTip("Pixels neighbouring tiles share (blended, so no seams), a multiple of 8")
        self.denoise_spin = percent_spin(self, 30, 0, "Refine strength: how much the model repaints the enlarged "
                                         "picture (30 % as Krita AI Diffusion; 0 %: the upscaler alone)")
        self.denoise_spin.setPrefix("Refine ")
        for widget in (self.size_combo, self.tile_spin, self.overlap_spin, self.denoise_spin):
            widget.setMinimumWidth(80)
        grid.addWidget(self.size_combo, 0, 0)
        size_row = QHBoxLayout()
        size_row.addWidget(self.width_spin)
        size_row.addWidget(self.height_spin)
        grid.addLayout(size_row, 0, 1)
        grid.addWidget(self.upscaler_combo, 1, 0, 1, 2)
        grid.addWidget(self.tile_spin, 2, 0)
        grid.addWidget(self.overlap_spin, 2, 1)
        grid.addWidget(self.denoise_spin, 3, 0)
        grid.setColumnStretch(0, 1)
        grid.setColumnStretch(1, 1)
        layout.addLayout(grid)
        self.prompt_edit = QLineEdit(self)
        self.prompt_edit.setPlaceholderText("Refine prompt (empty: the prompt above)")
        self.prompt_edit.setToolTip("What the refine pass is told; empty: the prompt above")
        layout.addWidget(self.prompt_edit)
        self.size_combo.currentIndexChanged.connect(self._size_mode)
        self._size_mode()

    def _size_mode(self, *_: Any) -> None:
        pixels = not self.size_combo.currentData()
        self.width_spin.setEnabled(pixels)
        self.height_spin.setEnabled(pixels)

    def fill(self, capabilities: dict[str, Any]) -> None:
        if capabilities:
            fill_combo(self.upscaler_combo, upscalers_of(capabilities))

    def read(self) -> UpscaleSettings:
        return UpscaleSettings(factor=float(self.size_combo.currentData() or 0.0), width=self.width_spin.value(),
                               height=self.height_spin.value(), upscaler=self.upscaler_combo.currentText() or "lanczos",
                               tile_size=self.tile_spin.value(), overlap=self.overlap_spin.value(),
                               denoise=self.denoise_spin.value() / 100.0, prompt=self.prompt_edit.text())
