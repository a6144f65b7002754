"""The docker's settings dialog: the server connection and the options an artist sets once.

The docker connects by itself when it opens; this dialog is for another server, a token, and
the generation options that rarely change (steps, sampler, selection handling, where results go).
"""

from __future__ import annotations

from typing import Any

from .logic import Settings
from .qt import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

DEFAULT_SAMPLERS = ["Euler a", "Euler", "DPM++ 2M", "DPM++ 2M Karras", "DDIM", "UniPC"]


def _spin(parent: QWidget, low: int, high: int, value: int, suffix: str, tooltip: str) -> QSpinBox:
    spin = QSpinBox(parent)
    spin.setRange(low, high)
    spin.setValue(value)
    spin.setSuffix(suffix)
    spin.setToolTip(tooltip)
    return spin


class SettingsDialog(QDialog):
    """Server and generation settings. Its widgets are read by the docker on each job."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("ctrlgen settings")
        layout = QVBoxLayout(self)

        server = QGroupBox("Server", self)
        form = QFormLayout(server)
        self.status_label = QLabel("Not connected", server)
        self.status_label.setWordWrap(True)
        self.status_label.setToolTip("Whether the docker reaches `ctrlgen serve`, and where")
        form.addRow("Status", self.status_label)
        self.url_edit = QLineEdit(server)
        self.url_edit.setPlaceholderText("from ctrlgen's config folder")
        self.url_edit.setToolTip("Empty: the address in ctrlgen's config folder (server.json); or type one, "
                                 "e.g. http://127.0.0.1:7421")
        form.addRow("URL", self.url_edit)
        self.token_edit = QLineEdit(server)
        self.token_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.token_edit.setPlaceholderText("from ctrlgen's config folder")
        self.token_edit.setToolTip("Empty: ctrlgen's token file; or paste the token of a server whose config "
                                   "folder this Krita cannot read")
        form.addRow("Token", self.token_edit)
        self.connect_button = QPushButton("Connect", server)
        self.connect_button.setToolTip("(Re)connect and reload the lists of models, preprocessors and detectors")
        form.addRow(self.connect_button)
        layout.addWidget(server)

        gen = QGroupBox("Generation", self)
        form = QFormLayout(gen)
        self.steps_spin = _spin(gen, 1, 150, 20, "", "Denoising steps")
        form.addRow("Steps", self.steps_spin)
        self.cfg_spin = QDoubleSpinBox(gen)
        self.cfg_spin.setRange(0.0, 30.0)
        self.cfg_spin.setSingleStep(0.5)
        self.cfg_spin.setValue(7.0)
        self.cfg_spin.setToolTip("How closely the model follows the prompt (classifier-free guidance)")
        form.addRow("CFG scale", self.cfg_spin)
        self.sampler_combo = QComboBox(gen)
        self.sampler_combo.addItems(DEFAULT_SAMPLERS)
        self.sampler_combo.setToolTip("The sampler (the list comes from the server)")
        form.addRow("Sampler", self.sampler_combo)
        self.scale_check = QCheckBox("Generate at the model's resolution", gen)
        self.scale_check.setChecked(True)
        self.scale_check.setToolTip("Big canvases are generated at the model's size and scaled up; small "
                                    "selections are repainted at it and scaled down. Off: the area's own size.")
        form.addRow("Resolution", self.scale_check)
        self.preview_check = QCheckBox("Show previews while generating", gen)
        self.preview_check.setChecked(True)
        self.preview_check.setToolTip("The server sends a small picture of the image every few steps")
        form.addRow("Live preview", self.preview_check)
        layout.addWidget(gen)

        area = QGroupBox("Selection and layers", self)
        form = QFormLayout(area)
        self.grow_spin = _spin(area, -256, 256, 0, " px", "Pixels added around the selection (negative shrinks)")
        form.addRow("Grow selection", self.grow_spin)
        self.feather_spin = _spin(area, 0, 256, 8, " px", "Width of the selection's soft edge; the result "
                                  "layer's transparency follows it")
        form.addRow("Feather selection", self.feather_spin)
        self.context_spin = _spin(area, 0, 1024, 32, " px", "How much of the surroundings the model sees "
                                  "around the selection")
        form.addRow("Context around selection", self.context_spin)
        self.source_combo = QComboBox(area)
        self.source_combo.addItem("Visible image", "visible")
        self.source_combo.addItem("Active layer", "active_layer")
        self.source_combo.setToolTip("What refining (Strength below 100 %) starts from: everything visible, "
                                     "or only the active layer")
        form.addRow("Input", self.source_combo)
        self.top_check = QCheckBox("Put results on top of the layer stack", area)
        self.top_check.setToolTip("Off: each result goes right above the active layer, inside its group")
        form.addRow("Results", self.top_check)
        layout.addWidget(area)

        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close, self)
        buttons.rejected.connect(self.hide)
        layout.addWidget(buttons)

    def read_into(self, s: Settings) -> None:
        s.steps = self.steps_spin.value()
        s.cfg_scale = self.cfg_spin.value()
        s.sampler = self.sampler_combo.currentText()
        s.grow_px = self.grow_spin.value()
        s.feather_px = self.feather_spin.value()
        s.context_px = self.context_spin.value()
        s.source = self.source_combo.currentData() or "visible"
        s.scale_to_model = self.scale_check.isChecked()
        s.live_preview = self.preview_check.isChecked()
        s.place_on_top = self.top_check.isChecked()

    def show_values(self, s: Settings) -> None:
        """Show ``s`` (a style applied, for instance)."""
        self.steps_spin.setValue(s.steps)
        self.cfg_spin.setValue(s.cfg_scale)
        index = self.sampler_combo.findText(s.sampler)
        if index >= 0:
            self.sampler_combo.setCurrentIndex(index)

    def values(self) -> dict[str, Any]:
        s = Settings()
        self.read_into(s)
        return {"steps": s.steps, "cfg_scale": s.cfg_scale, "sampler": s.sampler}
