"""Runs INSIDE Krita, with krita_scenarios.py: the docker as Krita docks it in a main window
with a document open, used through its buttons; the screenshots in docs/krita.md."""

import time

from krita_scenarios import _wait


def _settle(app, seconds=0.3):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)


def _inside(widget, box):
    """Whether ``widget`` is shown whole inside ``box`` (a widget containing it)."""
    top_left = widget.mapTo(box, widget.rect().topLeft())
    bottom_right = widget.mapTo(box, widget.rect().bottomRight())
    return (widget.isVisible() and top_left.x() >= 0 and top_left.y() >= 0
            and bottom_right.x() < box.width() and bottom_right.y() < box.height())


def screenshot(config):
    """A real session: the astronaut photo open, the docker docked at the size Krita gives it,
    a generation run from its button (a result in the history), then Fix faces showing the
    detection. Grabs the window and the docker for docs/krita.md; measures the docker."""
    import ctrlgen_krita  # noqa: F401 - importing registers the docker factory
    from ctrlgen_krita.docker import CtrlgenDocker
    from ctrlgen_krita.qt import QApplication, QtWidgets

    from krita import Krita

    app = Krita.instance()
    qapp = QApplication.instance()
    photo = config["astronaut"]
    doc = app.createDocument(photo["width"], photo["height"], "astronaut", "RGBA", "U8", "", 72.0)
    layer = doc.createNode("Photo", "paintlayer")
    doc.rootNode().addChildNode(layer, None)
    with open(photo["path"], "rb") as handle:
        layer.setPixelData(handle.read(), 0, 0, photo["width"], photo["height"])
    doc.refreshProjection()
    # The window Krita treats as current: the docker's "active document" is this window's.
    win = app.activeWindow() or app.openWindow()
    win.qwindow().resize(1280, 900)
    win.qwindow().show()
    view = win.addView(doc)
    win.showView(view)
    docker = None
    end = time.monotonic() + 30
    while time.monotonic() < end and docker is None:
        qapp.processEvents()
        found = win.qwindow().findChildren(CtrlgenDocker)
        docker = found[0] if found else None
    if docker is None:
        return {"docker": False}
    for dock in win.qwindow().findChildren(QtWidgets.QDockWidget):
        if dock is not docker and dock.objectName() not in ("KisLayerBox",):
            dock.hide()
    docker.show()
    docker.raise_()
    panel = docker.panel
    controller = panel.controller
    _wait(controller, lambda: controller.connection != "connecting", 30)
    _settle(qapp)
    out = {"docker": True, "floating": docker.isFloating(), "connection": controller.connection,
           "default_size": [docker.width(), docker.height()],
           "top_visible": {name: _inside(getattr(panel, name), docker) for name in
                           ("workspace_combo", "model_combo", "prompt_edit", "generate_button")},
           "minimum_width": panel.minimumSizeHint().width()}
    panel.model_combo.setCurrentIndex(panel.model_combo.findText(config["model"]))
    panel.prompt_edit.setPlainText("an astronaut portrait, oil painting")
    panel.steps_spin.setValue(4)
    panel.show_workspace("fix")
    panel.fix_page.strength_spin.setValue(40)
    panel.fix_faces_button.click()
    _wait(controller, lambda: not controller._jobs, 120)
    _settle(qapp, 0.5)
    out["fix_message"] = controller.message
    fix_path = config["screenshot"].replace("krita-docker.png", "krita-fix.png")
    out["fix_saved"] = docker.grab().save(fix_path, "PNG")
    panel.cancel_fix_button.click()
    panel.show_workspace("generate")

    panel.model_combo.setCurrentIndex(panel.model_combo.findText(config["model"]))
    panel.prompt_edit.setPlainText("an astronaut portrait, oil painting")
    panel.negative_edit.setText("blurry")
    panel.steps_spin.setValue(3)
    panel.seed_spin.setValue(7)
    panel.strength_spin.setValue(100)
    from ctrlgen_krita import kritadoc
    from ctrlgen_krita.logic import ControlLayer

    # The photo as a control layer (canny edges steer the repaint): a row in the docker.
    controller.settings.controls.append(ControlLayer(kritadoc.node_id(layer), "Photo", "canny",
                                                     model=config["controlnet"], strength=0.8, end=0.9))
    panel.refresh()
    from krita import Selection

    selection = Selection()  # repaint the sky at the top right: the photo stays visible around it
    selection.select(340, 10, 160, 190, 255)
    doc.setSelection(selection)
    _settle(qapp, 0.7)
    out["button_text"] = panel.generate_button.text()
    panel.generate_button.click()
    _wait(controller, lambda: controller.queue.entries and not controller.busy and not controller._jobs, 300)
    panel.history_list.setCurrentRow(0)
    _settle(qapp, 0.5)
    out["history"] = panel.history_list.count()
    out["control_rows"] = len(panel.generate_page.rows)
    out["layers"] = [n.name() for n in doc.rootNode().childNodes()]
    out["window_saved"] = win.qwindow().grab().save(config["window_screenshot"], "PNG")
    out["saved"] = docker.grab().save(config["screenshot"], "PNG")
    out["path"] = config["screenshot"]

    # At 260 px wide the top row still fits.
    docker.setFloating(True)
    docker.resize(260, 400)
    _settle(qapp, 0.5)
    out["narrow"] = {"width": panel.width(),
                     "top_visible": {name: _inside(getattr(panel, name), panel) for name in
                                     ("workspace_combo", "settings_button", "model_combo", "prompt_edit")}}
    docker.setFloating(False)
    doc.setModified(False)
    return out


SCENARIOS = {"screenshot": screenshot}
