"""The docker's workspace pages: Generate (options, control and reference layers) and Fix
(faces / hands, the detections drawn before anything is repainted)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .fixing import FixSettings, detectors_for
from .layer_rows import ControlRow, ReferenceRow, fill_combo, fraction_spin
from .logic import SELECTION_MODES, Settings
from .qt import (
    QComboBox,
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
        for mode, text in SELECTION_MODES.items():
            self.mode_combo.addItem(text, mode)
        self.mode_combo.setToolTip("With a selection: repaint inside it, or everything outside it (replace the "
                                   "background of what you selected)")
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
        grid.setColumnStretch(0, 1)
        grid.setColumnStretch(1, 1)
        layout.addLayout(grid)

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

    def sync_rows(self, settings: Settings, preprocessors: list[str], control_models: list[str],
                  reference_models: list[str], on_remove: Callable[[Any], None],
                  on_preview: Callable[[Any], None]) -> None:
        """One row per control and reference layer in ``settings`` (rows are rebuilt only when
        the list changed, so editing a row never loses focus)."""
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
