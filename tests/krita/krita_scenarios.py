"""Runs INSIDE Krita (``kritarunner -s krita_scenarios -f main``), not under pytest.

Drives the installed ctrlgen_krita plugin against a real ``ctrlgen serve`` on real Krita
documents and writes what it saw (layer names, messages, raw pixels as base64) to the JSON
file named in the config; tests/krita/test_in_krita.py asserts on it. Standard library, Krita
and the plugin only: Krita's Python has neither pytest nor ctrlgen.
"""

import base64
import faulthandler
import json
import os
import sys
import time
import traceback


def _b64(data):
    return base64.b64encode(bytes(data)).decode("ascii")


def _wait(controller, done, timeout=150.0):
    from ctrlgen_krita.qt import QApplication

    app = QApplication.instance()
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        app.processEvents()
        controller.poll()
        if done():
            return True
        time.sleep(0.02)
    return False


def _new_document(width, height, name):
    from krita import Krita

    doc = Krita.instance().createDocument(width, height, name, "RGBA", "U8", "", 72.0)
    return doc


def _paint_layer(doc, name, pixel):
    """A full-canvas paint layer whose BGRA pixel at (x, y) is ``pixel(x, y)``."""
    width, height = doc.width(), doc.height()
    data = bytearray(width * height * 4)
    for y in range(height):
        for x in range(width):
            i = (y * width + x) * 4
            data[i:i + 4] = bytes(pixel(x, y))
    layer = doc.createNode(name, "paintlayer")
    doc.rootNode().addChildNode(layer, None)
    layer.setPixelData(bytes(data), 0, 0, width, height)
    doc.refreshProjection()
    doc.waitForDone()
    return layer


def _names(doc):
    from ctrlgen_krita import kritadoc

    return [node.name() for node in kritadoc.iter_layers(doc)]


def _connected(config, url=None, token=None):
    from ctrlgen_krita.controller import Controller

    holder = {}
    controller = Controller(lambda: holder.get("doc"))
    controller.connect(url or config["url"], token if token is not None else config["token"])
    _wait(controller, lambda: controller.connection != "connecting", 60)
    # The tiny test documents are generated at their own size (fast); model_resolution covers scaling.
    controller.settings.scale_to_model = False
    return controller, holder


def _record_submits(controller):
    sent = []
    original = controller.client.submit

    def submit(job, preview=False):
        sent.append(json.loads(json.dumps(job)))
        return original(job, preview)

    controller.client.submit = submit
    return sent


def _with_and_without(controller, layer_item):
    """Generate a 64×64 document twice, ``layer_item`` (a control or reference layer) used, then not;
    each run's status, result pixels and layer name."""
    outputs = []
    for enabled in (True, False):
        layer_item.enabled = enabled
        key = controller.generate()
        _wait(controller, lambda key=key: key is None or (not controller.queue.get(key).active
                                                          and not controller._jobs))
        layer = controller.results[-1][1] if controller.results and key is not None else None
        outputs.append({"status": controller.queue.get(key).status if key else None,
                        "pixels": _b64(layer.pixelData(0, 0, 64, 64)) if layer else None,
                        "name": layer.name() if layer else None})
    return outputs


def inpaint(config):
    from ctrlgen_krita import kritadoc

    from krita import Selection

    controller, holder = _connected(config)
    doc = holder["doc"] = _new_document(128, 112, "inpaint")
    painted = _paint_layer(doc, "Painted", lambda x, y: (x * 2, y * 2, 128, 255))
    before_painted = bytes(painted.pixelData(0, 0, 128, 112))
    before_projection = bytes(doc.pixelData(0, 0, 128, 112))
    selection = Selection()
    selection.select(40, 36, 44, 36, 255)
    doc.setSelection(selection)
    s = controller.settings
    s.model, s.prompt, s.seed, s.steps, s.strength = config["model"], "a red helmet", 5, 3, 1.0
    s.grow_px, s.feather_px, s.context_px = 2, 6, 12
    layers_before = _names(doc)
    key = controller.generate()
    previews = []  # (step, total, is a PNG) of each live preview the docker would show

    def done():
        if controller.preview is not None and (not previews or previews[-1][0] != controller.preview[2]):
            _, png, step, total = controller.preview
            previews.append((step, total, png[:8] == b"\x89PNG\r\n\x1a\n"))
        return not controller.queue.get(key).active and not controller._jobs

    finished = _wait(controller, done)
    entry = controller.queue.get(key)
    feathered = kritadoc.prepared_selection(doc, s)
    new_layers = [layer for d, layer in controller.results if d is doc]
    return {
        "finished": finished, "status": entry.status, "message": controller.message,
        "layers_before": layers_before, "layers_after": _names(doc),
        "width": 128, "height": 112,
        "painted_before": _b64(before_painted), "painted_after": _b64(painted.pixelData(0, 0, 128, 112)),
        "projection_before": _b64(before_projection),
        "result": _b64(new_layers[0].pixelData(0, 0, 128, 112)) if new_layers else None,
        "result_name": new_layers[0].name() if new_layers else None,
        "feathered_mask": _b64(feathered.pixelData(0, 0, 128, 112)),
        "previews": previews, "preview_after": controller.preview,
    }


def control(config):
    from ctrlgen_krita import kritadoc
    from ctrlgen_krita.logic import ControlLayer

    controller, holder = _connected(config)
    sent = _record_submits(controller)
    doc = holder["doc"] = _new_document(64, 64, "control")
    edges = _paint_layer(doc, "Edges", lambda x, y: (255, 255, 255, 255) if 12 <= x < 50 and 16 <= y < 52
                         else (0, 0, 0, 255))
    unit = ControlLayer(kritadoc.node_id(edges), "Edges", preprocessor="canny", model=config["controlnet"],
                        strength=1.0, start=0.0, end=1.0)
    s = controller.settings
    s.model, s.prompt, s.seed, s.steps, s.strength = config["model"], "a house", 11, 3, 1.0
    s.controls = [unit]
    controller.preview_control(unit)
    prefix = "[ctrlgen] control map: canny (Edges)"
    _wait(controller, lambda: any(name == prefix for name in _names(doc)), 120)
    preview = next((n for n in kritadoc.iter_layers(doc) if n.name() == prefix), None)
    outputs = _with_and_without(controller, unit)
    return {
        "message": controller.message, "layers": _names(doc), "width": 64, "height": 64,
        "edges": _b64(edges.pixelData(0, 0, 64, 64)),
        "preview": _b64(preview.pixelData(0, 0, 64, 64)) if preview else None,
        "jobs": sent, "with_control": outputs[0], "without_control": outputs[1],
    }


def cancel(config):
    controller, holder = _connected(config)
    doc = holder["doc"] = _new_document(256, 256, "cancel")
    painted = _paint_layer(doc, "Painted", lambda x, y: (x, y, 200, 255))
    before_projection = bytes(doc.pixelData(0, 0, 256, 256))
    before_painted = bytes(painted.pixelData(0, 0, 256, 256))
    s = controller.settings
    s.model, s.prompt, s.seed, s.steps, s.strength = config["model"], "a storm", 3, 150, 1.0
    layers_before = _names(doc)
    key = controller.generate()
    started = _wait(controller, lambda: controller.queue.get(key).step >= 1, 120)
    step_at_cancel = controller.queue.get(key).step
    controller.cancel()
    _wait(controller, lambda: not controller.queue.get(key).active and not controller._jobs, 120)
    # Give a late result (if the server had finished anyway) time to arrive and be dropped.
    _wait(controller, lambda: False, 1.0)
    return {
        "started": started, "step_at_cancel": step_at_cancel, "status": controller.queue.get(key).status,
        "message": controller.message, "layers_before": layers_before, "layers_after": _names(doc),
        "projection_same": bytes(doc.pixelData(0, 0, 256, 256)) == before_projection,
        "painted_same": bytes(painted.pixelData(0, 0, 256, 256)) == before_painted,
        "results": len(controller.results),
    }


def server_down(config):
    from ctrlgen_krita.client_import import Client
    from ctrlgen_krita.controller import Controller

    out = {}
    # 1. Connect to an address where nothing listens.
    controller, holder = _connected(config, url=config["dead_url"], token="x")
    out["connect"] = {"connection": controller.connection, "message": controller.message}
    # 2. Generate while not connected.
    doc = holder["doc"] = _new_document(64, 64, "down")
    layers_before = _names(doc)
    out["generate_unconnected"] = {"key": controller.generate(), "message": controller.message}
    # 3. The server stops after connecting: the job fails with the message, the document stays.
    controller.client = Client(config["dead_url"], token="x")
    controller.settings.model = config["model"]
    key = controller.generate()
    _wait(controller, lambda: not controller.queue.get(key).active, 60)
    out["generate_dead"] = {"status": controller.queue.get(key).status, "message": controller.message,
                            "layers_same": _names(doc) == layers_before}
    # 4. No server.json in the config folder (nothing started there).
    lonely = Controller(lambda: None)
    lonely.connect("", "", config_folder=config["empty_config_dir"])
    _wait(lonely, lambda: lonely.connection != "connecting", 30)
    out["discover"] = {"connection": lonely.connection, "message": lonely.message}
    # 5. A running server, a wrong token.
    wrong, _ = _connected(config, token="not-the-token")
    out["wrong_token"] = {"connection": wrong.connection, "message": wrong.message}
    return out


def window(config):
    """A real Krita main window: the docker factory and the actions the plugin registered."""
    import ctrlgen_krita  # noqa: F401 - importing registers the docker factory and the extension
    from ctrlgen_krita.docker import CtrlgenDocker
    from ctrlgen_krita.qt import QApplication

    from krita import Krita

    app = Krita.instance()
    win = app.openWindow()
    win.qwindow().show()
    dockers = []
    end = time.monotonic() + 30
    while time.monotonic() < end:
        QApplication.processEvents()
        dockers = win.qwindow().findChildren(CtrlgenDocker)
        if dockers and dockers[0].panel.controller.connection not in ("connecting",):
            break
        time.sleep(0.05)
    panel = dockers[0].panel if dockers else None
    saved = False
    if dockers:
        from ctrlgen_krita.qt import QtWidgets

        for dock in win.qwindow().findChildren(QtWidgets.QDockWidget):
            if dock is not dockers[0]:
                dock.hide()
        dockers[0].show()
        dockers[0].raise_()
        win.qwindow().resize(1280, 1000)
        for _ in range(10):
            QApplication.processEvents()
            time.sleep(0.02)
        saved = win.qwindow().grab().save(config["window_screenshot"], "PNG")
    actions = {name: app.action(name) is not None for name in ("ctrlgen_generate", "ctrlgen_inpaint", "ctrlgen_cancel",
                                                               "ctrlgen_fix_faces", "ctrlgen_fix_hands")}
    return {"dockers": len(dockers), "title": dockers[0].windowTitle() if dockers else None,
            "connection": panel.controller.connection if panel else None,
            "message": panel.controller.message if panel else None, "actions": actions,
            "window_screenshot": saved}


def undo(config):
    """A result is one step on Krita's undo stack; so is discarding it."""
    from krita import Krita

    app = Krita.instance()
    controller, holder = _connected(config)
    doc = holder["doc"] = _new_document(64, 64, "undo")
    _paint_layer(doc, "Painted", lambda x, y: (x * 4, 100, y * 4, 255))
    win = app.openWindow()  # edit_undo acts on the active view's document; the window stays hidden
    win.addView(doc)
    s = controller.settings
    s.model, s.prompt, s.seed, s.steps, s.strength = config["model"], "fog", 2, 2, 1.0
    key = controller.generate()
    _wait(controller, lambda: not controller.queue.get(key).active and not controller._jobs)
    seen = {"generated": _names(doc)}
    layer = controller.results[-1][1] if controller.results else None
    pixels = bytes(layer.pixelData(0, 0, 64, 64)) if layer else b""

    def step(action, name):
        app.action(action).trigger()
        doc.waitForDone()
        seen[name] = _names(doc)

    step("edit_undo", "undone")
    step("edit_redo", "redone")
    seen["redone_pixels_same"] = bool(layer) and bytes(layer.pixelData(0, 0, 64, 64)) == pixels
    seen["discarded_ok"] = controller.discard_last()
    seen["discarded"] = _names(doc)
    step("edit_undo", "discard_undone")
    doc.setModified(False)  # closing must not ask to save
    win.qwindow().close()
    return seen


def big_canvas(config):
    """A 4096×4096 canvas refined with a model the server does not have: how long the GUI
    thread is busy (reading the canvas, then each poll while 48 MB go to the server), and
    the missing-model message."""
    from krita import Krita

    controller, holder = _connected(config)
    side = 4096
    doc = holder["doc"] = Krita.instance().createDocument(side, side, "big", "RGBA", "U8", "", 72.0)
    layer = doc.createNode("Painted", "paintlayer")
    doc.rootNode().addChildNode(layer, None)
    row = bytes(range(256)) * (side * 4 // 256)
    layer.setPixelData(row * side, 0, 0, side, side)
    doc.refreshProjection()
    doc.waitForDone()
    s = controller.settings
    s.model, s.prompt, s.seed, s.steps, s.strength = "no-such-model", "x", 1, 2, 0.5
    layers_before = _names(doc)
    started = time.perf_counter()
    key = controller.generate()
    generate_s = time.perf_counter() - started
    polls = []
    from ctrlgen_krita.qt import QApplication

    end = time.monotonic() + 120
    while time.monotonic() < end and key is not None and (controller.queue.get(key).active or controller._jobs):
        QApplication.processEvents()
        t = time.perf_counter()
        controller.poll()
        polls.append(time.perf_counter() - t)
        time.sleep(0.01)
    return {"key": key, "generate_s": generate_s, "max_poll_s": max(polls) if polls else None,
            "polls": len(polls), "status": controller.queue.get(key).status if key else None,
            "message": controller.message, "layers_same": _names(doc) == layers_before}


def wrong_document(config):
    """A greyscale and a 16-bit document are refused with what to do; no job is sent."""
    from krita import Krita

    controller, holder = _connected(config)
    controller.settings.model = config["model"]
    out = {}
    for model, depth in (("GRAYA", "U8"), ("RGBA", "U16")):
        holder["doc"] = Krita.instance().createDocument(64, 64, "odd", model, depth, "", 72.0)
        out[f"{model}/{depth}"] = {"key": controller.generate(), "message": controller.message,
                                   "color": [holder["doc"].colorModel(), holder["doc"].colorDepth()]}
    out["queued"] = len(controller.queue.entries)
    return out


def reference(config):
    """A layer used as an IP-Adapter reference: the job carries it, and it changes the result."""
    from ctrlgen_krita import kritadoc
    from ctrlgen_krita.logic import ReferenceLayer

    controller, holder = _connected(config)
    sent = _record_submits(controller)
    doc = holder["doc"] = _new_document(64, 64, "reference")
    style = _paint_layer(doc, "Style", lambda x, y: (40, 90 + y, 250 - x, 255))
    ref = ReferenceLayer(kritadoc.node_id(style), "Style", model=config["ip_adapter"], scale=1.0)
    s = controller.settings
    s.model, s.prompt, s.seed, s.steps, s.strength = config["model"], "a portrait", 21, 2, 1.0
    s.references = [ref]
    outputs = _with_and_without(controller, ref)
    return {"message": controller.message, "jobs": sent, "with": outputs[0], "without": outputs[1]}


def model_resolution(config):
    """A 96×64 canvas, "generate at the model's resolution" on: the job asks for SD1.5's size
    in the canvas's shape, and the result arrives scaled back to the canvas as one layer."""
    controller, holder = _connected(config)
    controller.settings.scale_to_model = True
    sent = _record_submits(controller)
    doc = holder["doc"] = _new_document(96, 64, "resolution")
    _paint_layer(doc, "Painted", lambda x, y: (x * 2, y * 3, 90, 255))
    s = controller.settings
    s.model, s.prompt, s.seed, s.steps, s.strength = config["model"], "a landscape", 8, 2, 0.6
    key = controller.generate()
    finished = _wait(controller, lambda: not controller.queue.get(key).active and not controller._jobs)
    layer = controller.results[-1][1] if controller.results else None
    return {"finished": finished, "status": controller.queue.get(key).status, "message": controller.message,
            "jobs": sent, "layer_bounds": [layer.bounds().width(), layer.bounds().height()] if layer else None,
            "pixels": _b64(layer.pixelData(0, 0, 96, 64)) if layer else None}


SCENARIOS = {"model_resolution": model_resolution, "reference": reference, "wrong_document": wrong_document, "big_canvas": big_canvas, "window": window, "undo": undo, "inpaint": inpaint, "control": control, "cancel": cancel, "server_down": server_down}


def main(args=None):
    with open(os.environ["CTRLGEN_KRITA_TEST_CONFIG"], encoding="utf-8") as handle:
        config = json.load(handle)
    report = {"python": sys.version, "scenarios": {}}
    faulthandler.enable()  # a crash inside Krita prints the Python stack that led to it
    try:
        from ctrlgen_krita.qt import QT_API

        report["qt_api"] = QT_API
    except Exception:
        report["qt_api"] = traceback.format_exc()
    scenarios = dict(SCENARIOS)
    for module in ("krita_scenarios_bugs", "krita_scenarios_fix", "krita_scenarios_docker",
                   "krita_scenarios_upscale", "krita_scenarios_live"):  # more scenarios, in their own files
        try:
            scenarios.update(__import__(module).SCENARIOS)
        except Exception:
            report[module] = traceback.format_exc()
    for name in config["scenarios"]:
        started = time.monotonic()
        try:
            report["scenarios"][name] = scenarios[name](config)
        except Exception:
            report["scenarios"][name] = {"exception": traceback.format_exc()}
        report["scenarios"][name]["seconds"] = round(time.monotonic() - started, 2)
        # Written after each scenario: if Krita crashes in a later one, these results stay.
        with open(config["out"], "w", encoding="utf-8") as handle:
            json.dump(report, handle)
    sys.stdout.flush()
    # kritarunner can crash while tearing down; the report is on disk already.
    os._exit(0)
