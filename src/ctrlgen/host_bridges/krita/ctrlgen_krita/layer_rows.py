"""Control and reference layers as inline rows: each row edits one :class:`~.logic.ControlLayer`
or :class:`~.logic.ReferenceLayer` in place (on/off, type, model, weight, range, remove).

Two lines per row so they fit a 260 px docker: the layer and what it is on the first, how
strongly and when on the second.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .logic import NO_PREPROCESSOR, REFERENCE_ONLY, ControlLayer, ReferenceLayer
from .qt import QCheckBox, QComboBox, QDoubleSpinBox, QFrame, QGridLayout, QLabel, QToolButton, QWidget


def fraction_spin(parent: QWidget, value: float, maximum: float, tooltip: str) -> QDoubleSpinBox:
    spin = QDoubleSpinBox(parent)
    spin.setRange(0.0, maximum)
    spin.setSingleStep(0.05)
    spin.setDecimals(2)
    spin.setValue(value)
    spin.setToolTip(tooltip)
    spin.setButtonSymbols(QDoubleSpinBox.ButtonSymbols.NoButtons)  # narrow rows; wheel and keys still step
    return spin


def fill_combo(combo: QComboBox, items: list[str], current: str = "") -> None:
    """Replace the combo's items (if they changed), keeping ``current`` (or its choice) selected."""
    have = [combo.itemText(i) for i in range(combo.count())]
    keep = current or combo.currentText()
    combo.blockSignals(True)
    if have != list(items):
        combo.clear()
        combo.addItems(items)
    index = combo.findText(keep)
    if index >= 0:
        combo.setCurrentIndex(index)
    combo.blockSignals(False)


class _Row(QFrame):
    """The parts every row has: on/off, the layer's name, remove."""

    def __init__(self, item: Any, on_remove: Callable[[Any], None], parent: QWidget | None):
        super().__init__(parent)
        self.item = item
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.grid = QGridLayout(self)
        self.grid.setContentsMargins(3, 2, 3, 2)
        self.grid.setHorizontalSpacing(3)
        self.grid.setVerticalSpacing(2)
        self.enabled_check = QCheckBox(self)
        self.enabled_check.setChecked(item.enabled)
        self.enabled_check.setToolTip("Use this layer in the next job (untick to keep it listed but unused)")
        self.enabled_check.toggled.connect(self._store)
        self.name_label = QLabel(item.layer_name, self)
        self.name_label.setToolTip(f"Layer {item.layer_name!r}; hidden layers are left out")
        self.name_label.setMinimumWidth(30)
        self.remove_button = QToolButton(self)
        self.remove_button.setText("✕")
        self.remove_button.setToolTip("Remove from the list (the layer itself stays)")
        self.remove_button.clicked.connect(lambda: on_remove(self.item))
        self.grid.addWidget(self.enabled_check, 0, 0)
        self.grid.addWidget(self.name_label, 0, 1)

    def _store(self, *_: Any) -> None:
        self.item.enabled = self.enabled_check.isChecked()


class ControlRow(_Row):
    """☑ Sketch [canny ▾] ✕ / [ControlNet ▾] 1.00 0.00–1.00"""

    def __init__(self, item: ControlLayer, on_remove: Callable[[Any], None], parent: QWidget | None = None):
        super().__init__(item, on_remove, parent)
        self.preprocessor_combo = QComboBox(self)
        self.preprocessor_combo.setToolTip(f"How the layer becomes a control map; '{NO_PREPROCESSOR}': the layer "
                                           "already is one (a pose, a depth map, line art)")
        self.model_combo = QComboBox(self)
        self.model_combo.setToolTip("The ControlNet model (those for the checkpoint's architecture first)")
        self.weight_spin = fraction_spin(self, item.strength, 2.0, "Weight: how strongly the control steers")
        self.start_spin = fraction_spin(self, item.start, 1.0, "Start: the part of the denoising (0–1) where "
                                        "the control begins to act")
        self.end_spin = fraction_spin(self, item.end, 1.0, "End: where it stops acting (0–1)")
        self.preview_button = QToolButton(self)
        self.preview_button.setText("map")
        self.preview_button.setToolTip("Preview control map: insert what the model will follow as a new layer")
        self.grid.addWidget(self.preprocessor_combo, 0, 2, 1, 2)
        self.grid.addWidget(self.preview_button, 0, 4)
        self.grid.addWidget(self.remove_button, 0, 5)
        self.grid.addWidget(self.model_combo, 1, 0, 1, 3)
        self.grid.addWidget(self.weight_spin, 1, 3)
        self.grid.addWidget(self.start_spin, 1, 4)
        self.grid.addWidget(self.end_spin, 1, 5)
        self.grid.setColumnStretch(1, 1)
        self.grid.setColumnStretch(2, 1)
        for combo in (self.preprocessor_combo, self.model_combo):
            combo.setMinimumContentsLength(4)
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.currentIndexChanged.connect(self._store)
        for spin in (self.weight_spin, self.start_spin, self.end_spin):
            spin.valueChanged.connect(self._store)

    def fill(self, preprocessors: list[str], models: list[str]) -> None:
        fill_combo(self.preprocessor_combo, preprocessors, self.item.preprocessor)
        fill_combo(self.model_combo, models, self.item.model)
        if not self.item.model and self.model_combo.count():
            self.item.model = self.model_combo.currentText()

    def _store(self, *_: Any) -> None:
        super()._store()
        item = self.item
        item.preprocessor = self.preprocessor_combo.currentText() or item.preprocessor or NO_PREPROCESSOR
        item.model = self.model_combo.currentText() or item.model
        item.strength = self.weight_spin.value()
        item.start = self.start_spin.value()
        item.end = self.end_spin.value()


class ReferenceRow(_Row):
    """☑ Style ✕ / [IP-Adapter ▾] 0.60"""

    def __init__(self, item: ReferenceLayer, on_remove: Callable[[Any], None], parent: QWidget | None = None):
        super().__init__(item, on_remove, parent)
        self.kind_label = QLabel("reference", self)
        self.kind_label.setToolTip("An image prompt: the whole layer steers style or subject, whatever the "
                                   "selection")
        self.model_combo = QComboBox(self)
        self.model_combo.setToolTip(f"An IP-Adapter model, or {REFERENCE_ONLY!r}: the model's own attention, "
                                    "no extra weights")
        self.model_combo.setMinimumContentsLength(4)
        self.model_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.weight_spin = fraction_spin(self, item.scale, 2.0, "Weight: how strongly the reference steers "
                                         "(the IP-Adapter scale, or reference-only's weight)")
        self.grid.addWidget(self.kind_label, 0, 2, 1, 3)
        self.grid.addWidget(self.remove_button, 0, 5)
        self.grid.addWidget(self.model_combo, 1, 0, 1, 5)
        self.grid.addWidget(self.weight_spin, 1, 5)
        self.grid.setColumnStretch(1, 1)
        self.model_combo.currentIndexChanged.connect(self._store)
        self.weight_spin.valueChanged.connect(self._store)

    def fill(self, models: list[str]) -> None:
        fill_combo(self.model_combo, models, self.item.model)
        if not self.item.model and self.model_combo.count():
            self.item.model = self.model_combo.currentText()

    def _store(self, *_: Any) -> None:
        super()._store()
        self.item.model = self.model_combo.currentText() or self.item.model
        self.item.scale = self.weight_spin.value()
