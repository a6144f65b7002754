"""The docker's widgets outside Krita, on whichever Qt binding is importable (PyQt6 is what
Krita 6 uses; the real-Krita tests cover PyQt5), with a look-alike document and a real server.

Skipped when neither PyQt6 nor PyQt5 can be imported in this Python:
``pip install PyQt6`` to run it.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from fake_krita import FakeDocument


def qt_binding() -> str | None:
    for name in ("PyQt6", "PyQt5"):
        try:
            __import__(f"{name}.QtWidgets")
            return name
        except ImportError:
            continue
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(qt_binding() is None,
                                                   reason="neither PyQt6 nor PyQt5 is installed (pip install PyQt6)")]


@pytest.fixture(scope="module")
def qapp():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from ctrlgen.host_bridges.krita.ctrlgen_krita.qt import QApplication

    return QApplication.instance() or QApplication([])


@pytest.fixture(scope="module")
def server(tmp_path_factory, bridge_model_root):
    from krita_support import bridge_helpers

    live = bridge_helpers().start_server(tmp_path_factory.mktemp("panel-server"), bridge_model_root)
    yield live
    live.stop()


def spin(qapp, panel, done, timeout=120.0, each=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        qapp.processEvents()
        panel.controller.poll()
        if each is not None:
            each()
        if done():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out; message: {panel.controller.message!r}")


def test_panel_connects_generates_and_inpaints_through_its_buttons(qapp, server):
    from ctrlgen.host_bridges.krita.ctrlgen_krita.docker import CtrlgenPanel
    from ctrlgen.host_bridges.krita.ctrlgen_krita.qt import QT_API

    assert QT_API == qt_binding()
    doc = FakeDocument(80, 64)
    painted = doc.add_layer("Painted", np.full((64, 80, 4), (10, 200, 30, 255), np.uint8))
    panel = CtrlgenPanel()
    panel.controller.document = lambda: doc
    panel.settings_button.click()  # the connection lives in the settings dialog
    assert panel.settings_dialog.isVisible()
    panel.url_edit.setText(server.url)
    panel.token_edit.setText(server.token)
    panel.connect_button.click()
    spin(qapp, panel, lambda: panel.controller.connection != "connecting")
    assert panel.status_label.toolTip() == f"Connected to {server.url}", panel.message_label.text()
    assert panel.settings_dialog.status_label.text() == f"Connected to {server.url}"
    assert panel.model_combo.findText("tiny-sd15") >= 0
    panel.model_combo.setCurrentIndex(panel.model_combo.findText("tiny-sd15"))
    panel.prompt_edit.setPlainText("a green field")
    panel.steps_spin.setValue(2)
    panel.seed_spin.setValue(3)
    panel.feather_spin.setValue(4)

    # Generate without a selection: the whole canvas, one new opaque layer; the docker shows
    # the server's previews while it runs and hides them when it is done.
    previews = []

    def watch_preview():
        pixmap = panel.preview_label.pixmap()
        if panel.preview_label.isVisibleTo(panel) and pixmap is not None and not pixmap.isNull():
            previews.append((pixmap.width(), pixmap.height(), panel.preview_label.toolTip()))

    assert panel.preview_check.isChecked() and not panel.preview_label.isVisibleTo(panel)
    assert panel.generate_button.text() == "Generate"
    panel.generate_button.click()
    spin(qapp, panel, lambda: not panel.controller.busy and not panel.controller._jobs, each=watch_preview)
    assert panel.queue_list.item(0).text() == "#1 txt2img — finished"
    assert previews and previews[0][2].startswith("Preview at step ")
    width, height = previews[0][:2]  # the generation's own size (the model's), the canvas's shape
    assert abs(width / height - 80 / 64) < 0.05
    assert not panel.preview_label.isVisibleTo(panel) and panel.controller.preview is None
    layers = [n.name() for n in doc.root.children]
    assert layers == ["Painted", "[ctrlgen] #1 txt2img: a green field (seed 3)"]
    result = doc.root.children[-1].pixels
    assert (result[..., 3] == 255).all() and result[..., :3].std() > 0
    # The result is in the history too: a thumbnail with its seed, the parameters in its tooltip.
    assert panel.history_list.count() == 1
    assert panel.history_list.item(0).text() == "#1 · seed 3 ✓"
    assert "a green field" in panel.history_list.item(0).toolTip()

    # With a selection the same (one) button inpaints it; the result layer is transparent
    # outside. Previews switched off: the server is not asked for any.
    doc.select(30, 20, 20, 16)
    panel._label_action()
    assert panel.generate_button.text() == "Inpaint selection"
    panel.preview_check.setChecked(False)
    previews.clear()
    panel.generate_button.click()
    spin(qapp, panel, lambda: not panel.controller.busy and not panel.controller._jobs, each=watch_preview)
    assert previews == []
    assert panel.queue_list.item(0).text() == "#2 inpaint — finished"
    # Right above the active layer (Painted), under the first result.
    assert [n.name()[:12] for n in doc.root.children] == ["Painted", "[ctrlgen] #2", "[ctrlgen] #1"]
    inpainted = doc.root.children[1].pixels
    ys, xs = np.nonzero(inpainted[..., 3])
    assert xs.min() >= 30 - 4 and xs.max() < 50 + 4 and ys.min() >= 20 - 4 and ys.max() < 36 + 4
    assert (inpainted[24:32, 34:46, 3] == 255).all()
    assert (painted.pixels == (10, 200, 30, 255)).all()

    # Discard (nothing selected in the history) removes the newest result layer and its entry.
    panel.history_list.setCurrentRow(-1)
    panel.discard_button.click()
    assert [n.name() for n in doc.root.children] == layers
    assert panel.history_list.count() == 1
    panel.close()


def test_panel_is_compact_and_every_control_has_a_tooltip(qapp):
    from ctrlgen.host_bridges.krita.ctrlgen_krita.docker import CtrlgenPanel
    from ctrlgen.host_bridges.krita.ctrlgen_krita.logic import ControlLayer, ReferenceLayer
    from ctrlgen.host_bridges.krita.ctrlgen_krita.qt import QComboBox, QLineEdit, QPlainTextEdit, QtWidgets

    doc = FakeDocument(64, 64)
    panel = CtrlgenPanel()
    panel.controller.document = lambda: doc
    panel.controller.settings.controls.append(ControlLayer("id1", "Sketch", "canny", "cn"))
    panel.controller.settings.references.append(ReferenceLayer("id2", "Style", "ip"))
    panel.refresh()
    panel.resize(260, 187)  # what Krita first gives a docker opened from Settings > Dockers
    panel.show()
    for _ in range(5):
        qapp.processEvents()
    # The main task never scrolls: workspace, model, prompt and the action button lie inside
    # the 260×187 box, fully visible, the action button not clipped.
    for widget in (panel.workspace_combo, panel.model_combo, panel.prompt_edit, panel.generate_button,
                   panel.settings_button):
        top_left = widget.mapTo(panel, widget.rect().topLeft())
        bottom_right = widget.mapTo(panel, widget.rect().bottomRight())
        assert widget.isVisible() and top_left.x() >= 0 and top_left.y() >= 0, widget
        assert bottom_right.x() < 260 and bottom_right.y() < 187, (widget, bottom_right)
    assert panel.minimumSizeHint().width() <= 260
    # One action button: no separate Inpaint button next to Generate.
    texts = [b.text() for b in panel.findChildren(QtWidgets.QPushButton)]
    assert "Inpaint" not in texts and texts.count("Generate") == 1
    # Every control has a tooltip (in the docker and in its settings dialog).
    kinds = (QtWidgets.QAbstractButton, QComboBox, QLineEdit, QPlainTextEdit, QtWidgets.QAbstractSpinBox)
    missing = [f"{type(w).__name__} {getattr(w, 'text', lambda: '')()!r}"
               for root in (panel, panel.settings_dialog) for w in root.findChildren(QtWidgets.QWidget)
               if isinstance(w, kinds) and not w.toolTip() and w.parent() is not None
               and not isinstance(w.parent(), (QtWidgets.QAbstractSpinBox, QComboBox, QtWidgets.QDialogButtonBox,
                                               QtWidgets.QScrollBar, QtWidgets.QAbstractScrollArea))]
    assert not missing, missing
    # Every workspace is built (Live since the server's live channel, issue 16).
    model = panel.workspace_combo.model()
    enabled = {panel.workspace_combo.itemData(i): model.item(i).isEnabled() for i in range(model.rowCount())}
    assert enabled == {"generate": True, "fix": True, "upscale": True, "live": True}
    panel.close()
