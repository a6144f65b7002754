"""Runs INSIDE Krita, with krita_scenarios.py: the Fix workspace on real photos (skimage's
astronaut, insightface's group photo t1.jpg), written as raw BGRA files by the test."""

import time

from krita_scenarios import _b64, _connected, _names, _new_document, _wait


def _photo_document(config, key, name):
    """A document holding the photo ``config[key]`` (``{"path", "width", "height"}``, raw BGRA)."""
    photo = config[key]
    doc = _new_document(photo["width"], photo["height"], name)
    layer = doc.createNode("Photo", "paintlayer")
    doc.rootNode().addChildNode(layer, None)
    with open(photo["path"], "rb") as handle:
        layer.setPixelData(handle.read(), 0, 0, photo["width"], photo["height"])
    doc.refreshProjection()
    doc.waitForDone()
    return doc, layer


def _detect(controller, target):
    key = controller.detect(target)
    _wait(controller, lambda: key is None or key not in controller._jobs, 120)
    pending = controller.pending_fix
    return key, pending


def fix_faces(config):
    """Fix faces on the astronaut: the face is found and shown first, the docker draws it; Run
    fix repaints it into a new layer, everything far from the face unchanged."""
    from ctrlgen_krita.docker import CtrlgenPanel
    from ctrlgen_krita.qt import QApplication

    controller, holder = _connected(config)
    doc, photo = _photo_document(config, "astronaut", "astronaut")
    holder["doc"] = doc
    s, fix = controller.settings, controller.fix
    s.model, s.prompt, s.seed, s.steps = config["model"], "an astronaut", 5, 3
    fix.strength, fix.options = 0.6, {"guide_size": 64, "max_size": 128}
    panel = CtrlgenPanel(controller)
    # The scenario polls the controller itself (as the others do); the panel's own timer would poll
    # from inside this loop's processEvents, a nesting that has crashed Krita 5.1 here once in
    # several runs (the docked docker's timer is exercised by the screenshot scenario).
    panel.timer.stop()
    panel.resize(300, 700)
    panel.show()
    layers_before = _names(doc)
    started = time.monotonic()
    key, pending = _detect(controller, "faces")
    detect_s = time.monotonic() - started
    out = {"detect_s": detect_s, "message_found": controller.message, "layers_after_detect": _names(doc),
           "boxes": pending.document_boxes if pending else None, "entry": controller.queue.get(key).label()}
    panel.refresh()
    for _ in range(5):
        QApplication.processEvents()
    shown = panel.fix_preview_image()
    out["preview"] = ({"width": shown.width(), "height": shown.height(), "box_colour": panel.BOX_COLOUR,
                       "pixels": _b64(shown.constBits().asstring(shown.width() * shown.height() * 4))}
                      if shown is not None else None)
    out["run_button"] = panel.run_fix_button.isEnabled()
    panel.run_fix_button.click()  # what the artist does
    fix_key = max(e.key for e in controller.queue.entries)
    _wait(controller, lambda: not controller.queue.get(fix_key).active and fix_key not in controller._jobs, 300)
    layer = controller.results[-1][1] if controller.results else None
    w, h = config["astronaut"]["width"], config["astronaut"]["height"]
    out.update({"status": controller.queue.get(fix_key).status, "message": controller.message,
                "layers_before": layers_before, "layers_after": _names(doc),
                "photo": _b64(photo.pixelData(0, 0, w, h)), "result": _b64(layer.pixelData(0, 0, w, h)) if layer else None,
                "pending_after": controller.pending_fix is not None})
    panel.close()
    return out


def fix_selection(config):
    """Fix faces / hands on the group photo: only what the selection covers is found; Cancel
    leaves the document as it was."""
    from krita import Selection

    controller, holder = _connected(config)
    doc, _ = _photo_document(config, "group", "group")
    holder["doc"] = doc
    s = controller.settings
    s.model, s.prompt, s.steps, s.context_px, s.feather_px = config["model"], "friends", 4, 16, 0
    out = {}
    key, pending = _detect(controller, "faces")
    out["faces_document"] = {"boxes": pending.document_boxes if pending else [], "message": controller.message}
    selection = Selection()
    selection.select(430, 270, 430, 230, 255)  # Ross and Chandler
    doc.setSelection(selection)
    key, pending = _detect(controller, "faces")
    out["faces_selection"] = {"boxes": pending.document_boxes if pending else [], "message": controller.message,
                              "region": list(pending.capture.region.tuple()) if pending else None}
    controller.cancel_fix()
    out["cancelled"] = {"pending": controller.pending_fix is not None, "message": controller.message,
                        "layers": _names(doc)}
    doc.setSelection(Selection())
    key, pending = _detect(controller, "hands")
    out["hands"] = {"boxes": pending.document_boxes if pending else [], "message": controller.message}
    controller.cancel_fix()
    out["layers"] = _names(doc)
    return out


SCENARIOS = {"fix_faces": fix_faces, "fix_selection": fix_selection}


def history(config):
    """Results kept in the history: a batch of two, previewed on the canvas, one applied, one
    discarded; the history is written beside the saved .kra and read back."""
    from ctrlgen_krita import kritadoc
    from ctrlgen_krita.history import history_folder
    from ctrlgen_krita.results import PREVIEW_NAME, ResultHistory

    from krita import Krita

    controller, holder = _connected(config)
    doc = holder["doc"] = _new_document(64, 64, "history")
    doc.setBatchmode(True)
    painted = doc.createNode("Painted", "paintlayer")
    doc.rootNode().addChildNode(painted, None)
    painted.setPixelData(bytes([90, 60, 30, 255]) * 64 * 64, 0, 0, 64, 64)
    path = config["kra"]
    saved = doc.saveAs(path)
    s = controller.settings
    s.model, s.prompt, s.seed, s.steps, s.strength = config["model"], "a kite", 9, 2, 1.0
    s.keep_in_history, s.batch_size = True, 2
    layers_before = _names(doc)
    key = controller.generate()
    _wait(controller, lambda: not controller.queue.get(key).active and key not in controller._jobs)
    items = controller.history.of(doc)
    out = {"saved": bool(saved), "status": controller.queue.get(key).status, "message": controller.message,
           "items": [[i.key, i.index, i.seed, i.applied] for i in items], "layers_before": layers_before,
           "layers_after_job": _names(doc)}

    def shown():
        layer = next((n for n in kritadoc.iter_layers(doc) if n.name() == PREVIEW_NAME), None)
        return _b64(layer.pixelData(0, 0, 64, 64)) if layer else None

    controller.history.preview(items[0])
    out["preview0"], out["layers_preview0"] = shown(), _names(doc)
    controller.history.preview(items[1])
    out["preview1"], out["layers_preview1"] = shown(), _names(doc)
    out["pixels"] = [_b64(i.bgra) for i in items]
    layer = controller.history.apply(items[1])
    out["applied_name"], out["layers_applied"] = layer.name(), _names(doc)
    out["applied_pixels"] = _b64(layer.pixelData(0, 0, 64, 64))
    controller.history.discard(items[0])
    out["layers_final"] = _names(doc)
    folder = history_folder(path)
    out["files"] = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
    again = ResultHistory().of(doc)
    out["reloaded"] = [[i.key, i.index, i.seed, i.applied, i.bgra == items[1].bgra] for i in again]
    out["documents"] = len(Krita.instance().documents())
    doc.setModified(False)
    doc.close()
    return out


SCENARIOS["history"] = history
