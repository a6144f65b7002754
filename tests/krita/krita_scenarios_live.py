"""Runs INSIDE Krita, with krita_scenarios.py: the Live workspace (ctrlgen_krita/live.py) against a
real server — rapid canvas changes, latest wins, one applied layer from the last change."""

import time

from krita_scenarios import _b64, _connected, _new_document, _paint_layer


def _tick_until(live, done, timeout=120.0):
    from ctrlgen_krita.qt import QApplication

    app = QApplication.instance()
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        app.processEvents()
        live.tick()
        if done():
            return True
        time.sleep(0.01)
    return False


def live(config):
    from ctrlgen_krita import kritadoc
    from ctrlgen_krita.live import LiveMode
    from ctrlgen_krita.logic import layer_pixels_for_server, to_bgra

    controller, holder = _connected(config)
    doc = holder["doc"] = _new_document(64, 64, "live")
    layer = _paint_layer(doc, "Paint", lambda x, y: (x * 4, y * 4, 90, 255))
    s = controller.settings
    s.model, s.prompt, s.seed, s.sampler, s.cfg_scale = config["model"], "a red helmet", 21, "Euler", 5.0
    mode = LiveMode(controller)
    mode.poll_s, mode.debounce_s = 0.02, 0.05
    mode.settings.steps, mode.settings.strength = 30, 0.5  # 15 steps a frame: the next change comes first
    assert mode.start()
    opened = _tick_until(mode, lambda: mode.session is not None or not mode.active, 30)
    report = {"opened": opened and mode.session is not None, "message_open": mode.message}
    # Three strokes in quick succession, each one sent as soon as the canvas settles.
    strokes = [(8, (0, 0, 255, 255)), (24, (0, 255, 0, 255)), (40, (255, 0, 0, 255))]
    sent = []
    for y, colour in strokes:
        data = bytearray(layer.pixelData(0, 0, 64, 64))
        for row in range(y, y + 8):
            for x in range(10, 54):
                i = (row * 64 + x) * 4
                data[i:i + 4] = bytes(colour)
        layer.setPixelData(bytes(data), 0, 0, 64, 64)
        doc.refreshProjection()
        before = len(mode.statuses)
        _tick_until(mode, lambda before=before: len(mode.statuses) > before, 10)
        sent.append(max(mode.statuses) if mode.statuses else None)
    finished = _tick_until(mode, lambda: all(status != "sent" for status in mode.statuses.values()), 300)
    final_canvas = bytes(doc.pixelData(0, 0, 64, 64))
    applied = mode.apply()
    doc.waitForDone()
    report.update(sent=sent, finished=finished, statuses={str(k): v for k, v in mode.statuses.items()},
                  latest=mode.latest.frame if mode.latest else None, message=mode.message,
                  live_layers=[name for name in (n.name() for n in kritadoc.iter_layers(doc))
                               if name.startswith("[ctrlgen] live")],
                  applied=_b64(applied.pixelData(0, 0, 64, 64)) if applied is not None else None)
    # What an ordinary job makes of the last canvas, with the same fields and seed.
    pixels, channels = layer_pixels_for_server(final_canvas)
    from ctrlgen_krita.client_import import RawImage

    job = {"model": s.model, "prompt": s.prompt, "negative_prompt": s.negative_prompt, "seed": 21, "steps": 30,
           "strength": 0.5, "cfg_scale": 5.0, "sampler": "Euler", "width": 64, "height": 64, "task": "img2img"}
    result = controller.client.run(job, images={"image": RawImage(pixels, 64, 64, channels)})[0]
    report["expected"] = _b64(to_bgra(result.data, result.channels))
    stats = mode.session.stats() if mode.session is not None else {}
    report["server"] = {key: stats.get(key) for key in ("frames", "done", "superseded", "image_bytes")}
    mode.stop()
    return report


SCENARIOS = {"live": live}
