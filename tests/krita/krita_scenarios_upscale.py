"""Runs INSIDE Krita, with krita_scenarios.py: the Upscale workspace, regions from a layer group
and the selection modes, each against the real server (asserted in test_in_krita_upscale.py)."""

from krita_scenarios import _b64, _connected, _names, _new_document, _paint_layer, _record_submits, _wait


def _record_uploads(controller):
    """What the docker uploads, by reference: (width, height, channels, base64 pixels)."""
    uploads = {}
    original = controller.client.upload

    def upload(image):
        ref = original(image)
        uploads[ref] = [image.width, image.height, image.channels, _b64(image.data)]
        return ref

    controller.client.upload = upload
    return uploads


def _done(controller, key):
    return _wait(controller, lambda: key is None or (not controller.queue.get(key).active and not controller._jobs))


def upscale(config):
    """A 64×48 document upscaled × 2 with the tiny 2× model: the document becomes 128×96, every
    layer scaled, and the refined picture a new layer of that size on top."""
    from ctrlgen_krita.logic import UpscaleSettings
    from ctrlgen_krita.upscale import start_upscale

    controller, holder = _connected(config)
    sent = _record_submits(controller)
    doc = holder["doc"] = _new_document(64, 48, "upscale")
    _paint_layer(doc, "Painted", lambda x, y: (x * 3, y * 4, 120, 255))
    dot = _paint_layer(doc, "Dot", lambda x, y: (0, 0, 255, 255) if 8 <= x < 16 and 8 <= y < 16 else (0, 0, 0, 0))
    s = controller.settings
    s.model, s.prompt, s.seed, s.steps = config["model"], "a sharp photo", 3, 4
    up = UpscaleSettings(factor=2.0, upscaler=config["upscaler"], tile_size=128, overlap=32, denoise=0.3)
    key = start_upscale(controller, up)
    finished = _done(controller, key)
    layer = controller.results[-1][1] if controller.results else None
    bounds = dot.bounds()
    return {"key": key, "finished": finished, "status": controller.queue.get(key).status if key else None,
            "message": controller.message, "jobs": sent, "size": [doc.width(), doc.height()],
            "layers": _names(doc), "result_name": layer.name() if layer else None,
            "result_bounds": [layer.bounds().x(), layer.bounds().y(), layer.bounds().width(),
                              layer.bounds().height()] if layer else None,
            "result": _b64(layer.pixelData(0, 0, 128, 96)) if layer else None,
            "dot_bounds": [bounds.x(), bounds.y(), bounds.width(), bounds.height()]}


def regions(config):
    """A group named "Regions" with two child layers painted in different halves (one at 50 %
    opacity) and a hidden one: the job has two region adapters whose uploaded masks are the
    layers' alpha × opacity, and a result lands."""
    from ctrlgen_krita import kritadoc
    from ctrlgen_krita.logic import Settings
    from ctrlgen_krita.pages import GeneratePage

    controller, holder = _connected(config)
    sent = _record_submits(controller)
    uploads = _record_uploads(controller)
    doc = holder["doc"] = _new_document(64, 64, "regions")
    _paint_layer(doc, "Background", lambda x, y: (200, 200, 200, 255))
    group = doc.createNode("Regions", "grouplayer")
    doc.rootNode().addChildNode(group, None)
    layers = {}
    for name, left, right in (("a red house", 0, 24), ("a green tree", 40, 64), ("hidden idea", 0, 64)):
        node = doc.createNode(name, "paintlayer")
        group.addChildNode(node, None)
        data = bytearray(64 * 64 * 4)
        for y in range(64):
            for x in range(left, right):
                data[(y * 64 + x) * 4:(y * 64 + x) * 4 + 4] = bytes((30, 60, 200, 255))
        node.setPixelData(bytes(data), 0, 0, 64, 64)
        layers[name] = node
    layers["a green tree"].setOpacity(128)
    layers["hidden idea"].setVisible(False)
    doc.refreshProjection()
    doc.waitForDone()
    # The Generate page finds the group named "Regions" by itself and lists its children.
    page = GeneratePage(lambda: None, lambda: None)
    page.document = lambda: doc
    chosen = Settings()
    page.read_into(chosen)
    rows = [row.layer_name for row in page.region_rows]
    s = controller.settings
    s.model, s.prompt, s.seed, s.steps, s.strength = config["model"], "a village", 6, 2, 1.0
    s.regions_group = chosen.regions_group
    key = controller.generate()
    message_at_start = controller.message
    finished = _done(controller, key)
    layer = controller.results[-1][1] if controller.results else None
    masks = {}
    for adapter in (sent[-1].get("adapters", []) if sent else []):
        masks[adapter["prompt"]] = uploads.get(adapter.get("mask"))
    return {"finished": finished, "status": controller.queue.get(key).status if key else None,
            "message": controller.message, "message_at_start": message_at_start,
            "group_found": chosen.regions_group == kritadoc.node_id(group), "rows": rows,
            "combo": page.regions_combo.currentText(), "jobs": sent, "masks": masks,
            "layers": _names(doc), "result_name": layer.name() if layer else None}


MODES = ("fill", "expand", "add", "remove", "replace_background")


def selection_modes(config):
    """Each selection mode on a 64×64 canvas with a 24×24 selection: the job it submits, and where
    its result layer has pixels; the result is discarded before the next mode."""
    from ctrlgen_krita import kritadoc

    from krita import Selection

    controller, holder = _connected(config)
    sent = _record_submits(controller)
    doc = holder["doc"] = _new_document(64, 64, "modes")
    _paint_layer(doc, "Painted", lambda x, y: (x * 4, y * 4, 90, 255))
    selection = Selection()
    selection.select(20, 20, 24, 24, 255)
    doc.setSelection(selection)
    s = controller.settings
    s.model, s.prompt, s.negative_prompt, s.seed, s.steps = config["model"], "a red ball", "blur", 9, 2
    s.grow_px, s.feather_px, s.context_px = 0, 4, 8
    out = {"projection_before": _b64(doc.pixelData(0, 0, 64, 64)), "mask": None, "modes": {}}
    out["mask"] = _b64(kritadoc.prepared_selection(doc, s).pixelData(0, 0, 64, 64))
    for mode in MODES:
        s.selection_mode, s.strength = mode, 1.0
        count = len(sent)
        key = controller.generate()
        finished = _done(controller, key)
        layer = controller.results[-1][1] if controller.results else None
        entry = {"finished": finished, "status": controller.queue.get(key).status if key else None,
                 "message": controller.message, "job": sent[count] if len(sent) > count else None,
                 "name": layer.name() if layer else None,
                 "result": _b64(layer.pixelData(0, 0, 64, 64)) if layer else None}
        if layer is not None:
            doc.waitForDone()
            entry["projection"] = _b64(doc.pixelData(0, 0, 64, 64))
            controller.discard_last()
        out["modes"][mode] = entry
    return out


SCENARIOS = {"upscale": upscale, "regions": regions, "selection_modes": selection_modes}
