"""Scenarios run inside real GIMP 3 (python-fu-eval) against a real `ctrlgen serve`.

Executed by tests/host_bridges/gimp/gimp_support.run_gimp with ``sys.argv[1]`` naming a JSON
config (``scenarios``, ``url``, ``token``, ``model``, ``out``, ``report``, ...). Each scenario
calls the plug-in's procedures through the PDB as a script would, and records what GIMP then
holds (layers, offsets, messages) in the report; pixels go to ``out/NAME.rgba`` files for the
test to compare with numpy. A scenario that raises is recorded with its traceback; the run
goes on. Standard library and GIMP only (GIMP's Python has no numpy here).
"""

import json
import os
import subprocess
import sys
import time
import traceback

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp, Gio  # noqa: E402

CONFIG = json.load(open(sys.argv[1], encoding="utf-8"))
OUT = CONFIG["out"]
PDB = Gimp.get_pdb()
PROCEDURES = ("ctrlgen-generate", "ctrlgen-inpaint", "ctrlgen-control-map", "ctrlgen-fix-faces",
              "ctrlgen-fix-hands", "ctrlgen-settings")
RGBA = "R'G'B'A u8"


def call(name, image=None, drawables=(), run_mode=Gimp.RunMode.NONINTERACTIVE, **values):
    """Run a procedure (by default non-interactively): (status name, error message or "")."""
    procedure = PDB.lookup_procedure(name)
    config = procedure.create_config()
    config.set_property("run-mode", run_mode)
    if image is not None:
        config.set_property("image", image)
        config.set_core_object_array("drawables", list(drawables))
    for key, value in values.items():
        config.set_property(key.replace("_", "-"), value)
    result = procedure.run(config)
    status = result.index(0)
    message = result.index(1) if status != Gimp.PDBStatusType.SUCCESS and result.length() > 1 else ""
    return status.value_nick, str(message or "")


def connect(url=None, token=None):
    return call("ctrlgen-settings", url=CONFIG["url"] if url is None else url,
                token=CONFIG["token"] if token is None else token)


def new_image(width, height, base=Gimp.ImageBaseType.RGB, precision=None):
    if precision is None:
        return Gimp.Image.new(width, height, base)
    return Gimp.Image.new_with_precision(width, height, base, precision)


def pattern(width, height, seed=0):
    """A smooth opaque RGBA gradient with some texture, built with bytes operations (fast at 4096²)."""
    red = bytes((x * 255 // max(1, width - 1) + seed) % 256 for x in range(width))
    blue_base = bytes((x * 7 + seed) % 97 for x in range(width))
    row = bytearray(width * 4)
    row[0::4] = red
    row[3::4] = b"\xff" * width
    rows = []
    for y in range(height):
        row[1::4] = bytes([(y * 255 // max(1, height - 1)) % 256]) * width
        row[2::4] = blue_base.translate(bytes(((v + 3 * y) % 97) + 80 for v in range(256)))
        rows.append(bytes(row))
    return b"".join(rows)


def layer_from_file(image, name, path, width, height):
    """A layer holding the raw RGBA file ``path`` (written by the test)."""
    layer = Gimp.Layer.new(image, name, width, height, Gimp.ImageType.RGBA_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
    image.insert_layer(layer, None, 0)
    buffer = layer.get_buffer()
    buffer.set(Gegl.Rectangle.new(0, 0, width, height), RGBA, open(path, "rb").read())
    buffer.flush()
    return layer


def add_base_layer(image, width, height, offset=(0, 0), seed=0):
    kind = Gimp.ImageType.GRAYA_IMAGE if image.get_base_type() == Gimp.ImageBaseType.GRAY else Gimp.ImageType.RGBA_IMAGE
    layer = Gimp.Layer.new(image, "base", width, height, kind, 100.0, Gimp.LayerMode.NORMAL)
    image.insert_layer(layer, None, 0)
    layer.set_offsets(*offset)
    buffer = layer.get_buffer()
    buffer.set(Gegl.Rectangle.new(0, 0, width, height), RGBA, pattern(width, height, seed))
    buffer.flush()
    return layer


def pixels(drawable):
    w, h = drawable.get_width(), drawable.get_height()
    return bytes(drawable.get_buffer().get(Gegl.Rectangle.new(0, 0, w, h), 1.0, RGBA, Gegl.AbyssPolicy.CLAMP))


def dump(name, data):
    with open(os.path.join(OUT, name + ".bin"), "wb") as handle:
        handle.write(data)
    return name + ".bin"


def describe(image):
    layers = []
    for layer in image.get_layers():
        _, x, y = layer.get_offsets()
        layers.append({"name": layer.get_name(), "x": x, "y": y, "width": layer.get_width(),
                       "height": layer.get_height(), "position": image.get_item_position(layer),
                       "parasites": list(layer.get_parasite_list())})
    return layers


# -- scenarios --------------------------------------------------------------------------------
def scenario_procedures(report):
    found = {}
    for name in PROCEDURES:
        procedure = PDB.lookup_procedure(name)
        found[name] = None if procedure is None else {"menu": list(procedure.get_menu_paths()),
                                                      "label": procedure.get_menu_label()}
    report["procedures"] = found


def scenario_discover(report):
    # Empty settings: the server named by server.json in CTRLGEN_CONFIG_DIR.
    report["settings"] = call("ctrlgen-settings", url="", token="")
    image = new_image(96, 80)
    layer = add_base_layer(image, 96, 80)
    report["generate"] = call("ctrlgen-generate", image, [layer], model=CONFIG["model"], prompt="a red cube",
                              steps=2, seed=5, model_size=False)
    report["layers"] = describe(image)
    image.delete()


def scenario_inpaint(report):
    connect()
    image = new_image(203, 157)
    base = add_base_layer(image, 181, 141, offset=(11, 7), seed=3)
    before = pixels(base)
    image.select_ellipse(Gimp.ChannelOps.REPLACE, 60, 40, 90, 64)
    Gimp.Selection.feather(image, 16.0)
    selection = image.get_selection()
    mask = bytes(selection.get_buffer().get(Gegl.Rectangle.new(0, 0, 203, 157), 1.0, "Y u8",
                                            Gegl.AbyssPolicy.NONE))
    _, _, x1, y1, x2, y2 = Gimp.Selection.bounds(image)
    report["selection_bounds"] = [x1, y1, x2 - x1, y2 - y1]
    report["call"] = call("ctrlgen-inpaint", image, [base], model=CONFIG["model"], prompt="a blue ball", steps=3,
                          seed=11, strength=1.0, context_px=8, model_size=False)
    report["layers"] = describe(image)
    top = image.get_layers()[0]
    report["files"] = {"mask": dump("inpaint-mask", mask), "before": dump("inpaint-before", before),
                       "after": dump("inpaint-after", pixels(base)), "result": dump("inpaint-result", pixels(top))}
    image.delete()


def scenario_generate(report):
    connect()
    image = new_image(110, 90)
    base = add_base_layer(image, 97, 75, offset=(5, 6))
    before = pixels(base)
    report["txt2img"] = call("ctrlgen-generate", image, [base], model=CONFIG["model"], prompt="a lighthouse",
                             steps=2, seed=2, strength=1.0, model_size=False)
    report["img2img"] = call("ctrlgen-generate", image, [base], model=CONFIG["model"], prompt="a lighthouse",
                             steps=4, seed=2, strength=0.5, model_size=False)
    report["layers"] = describe(image)
    report["base_unchanged"] = pixels(base) == before
    image.delete()


def scenario_control(report):
    connect()
    image = new_image(120, 90)
    base = add_base_layer(image, 101, 77, offset=(9, 4), seed=9)
    report["files"] = {"base": dump("control-base", pixels(base))}
    report["call"] = call("ctrlgen-control-map", image, [base], preprocessor=CONFIG["preprocessor"],
                          params=json.dumps(CONFIG["preprocessor_params"]))
    report["layers"] = describe(image)
    top = image.get_layers()[0]
    report["files"]["map"] = dump("control-map", pixels(top))
    data = top.get_parasite("ctrlgen-control-data")
    report["data"] = json.loads(bytes(data.get_data()).decode("utf-8")) if data is not None else None
    person = layer_from_file(image, "person", CONFIG["person_rgba"], 256, 256)
    report["pose"] = call("ctrlgen-control-map", image, [person], preprocessor="mediapipe_openpose", params="")
    pose = image.get_layers()[0]
    report["files"].update(person=dump("control-person", pixels(person)), pose=dump("control-pose", pixels(pose)))
    data = pose.get_parasite("ctrlgen-control-data")
    report["pose_data"] = json.loads(bytes(data.get_data()).decode("utf-8")) if data is not None else None
    report["pose_layers"] = describe(image)
    report["bad_params"] = call("ctrlgen-control-map", image, [base], preprocessor=CONFIG["preprocessor"],
                                params='{"no_such_param": 1}')
    image.delete()


def scenario_errors(report):
    image = new_image(96, 96)
    base = add_base_layer(image, 96, 96)
    connect(url=CONFIG["dead_url"])
    report["server_down"] = call("ctrlgen-generate", image, [base], model=CONFIG["model"], steps=2)
    connect(token="not-the-token")
    report["wrong_token"] = call("ctrlgen-generate", image, [base], model=CONFIG["model"], steps=2)
    connect()
    report["job_error"] = call("ctrlgen-generate", image, [base], model="no-such-model", steps=2)
    report["no_selection"] = call("ctrlgen-inpaint", image, [base], model=CONFIG["model"], steps=2)
    report["layers"] = describe(image)
    image.delete()


def scenario_modes(report):
    connect()
    deep = new_image(100, 90, precision=Gimp.Precision.U16_NON_LINEAR)
    base = add_base_layer(deep, 100, 90)
    deep.select_rectangle(Gimp.ChannelOps.REPLACE, 20, 20, 40, 30)
    report["u16"] = call("ctrlgen-inpaint", deep, [base], model=CONFIG["model"], steps=2, seed=1, context_px=4,
                         model_size=False)
    report["u16_precision"] = deep.get_precision().value_nick
    report["u16_layers"] = describe(deep)
    deep.delete()
    grey = new_image(100, 90, base=Gimp.ImageBaseType.GRAY)
    base = add_base_layer(grey, 100, 90)
    report["grey"] = call("ctrlgen-generate", grey, [base], model=CONFIG["model"], steps=2, seed=1, model_size=False)
    report["grey_layers"] = describe(grey)
    grey.delete()
    indexed = new_image(100, 90)
    base = add_base_layer(indexed, 100, 90)
    indexed.convert_indexed(Gimp.ConvertDitherType.NONE, Gimp.ConvertPaletteType.GENERATE, 16, False, False, "")
    report["indexed"] = call("ctrlgen-generate", indexed, [indexed.get_layers()[0]], model=CONFIG["model"], steps=2)
    report["indexed_layers"] = describe(indexed)
    indexed.delete()


def scenario_big(report):
    connect()
    image = new_image(4096, 4096)
    base = add_base_layer(image, 4096, 4096)
    image.select_ellipse(Gimp.ChannelOps.REPLACE, 3000, 200, 90, 70)
    started = time.monotonic()
    report["inpaint"] = call("ctrlgen-inpaint", image, [base], model=CONFIG["model"], steps=2, seed=1,
                             model_size=False)
    report["inpaint_s"] = time.monotonic() - started
    Gimp.Selection.none(image)
    started = time.monotonic()
    report["control"] = call("ctrlgen-control-map", image, [base], preprocessor=CONFIG["preprocessor"],
                             params=json.dumps(CONFIG["preprocessor_params"]))
    report["control_s"] = time.monotonic() - started
    report["layers"] = describe(image)
    top = next(layer for layer in image.get_layers() if layer.get_name() == "[ctrlgen] canny map")
    corner = bytes(top.get_buffer().get(Gegl.Rectangle.new(4096 - 64, 4096 - 64, 64, 64), 1.0, RGBA,
                                        Gegl.AbyssPolicy.NONE))
    report["files"] = {"corner": dump("big-corner", corner)}
    image.delete()


def scenario_fix(report):
    connect()
    image = new_image(128, 128)
    face = layer_from_file(image, "face", CONFIG["face_rgba"], 128, 128)
    report["faces"] = call("ctrlgen-fix-faces", image, [face], model=CONFIG["model"], steps=4, seed=3,
                           detector="mediapipe_face_short", guide_size=64, strength=0.5)
    report["files"] = {"face": dump("fix-face", pixels(face)), "fixed": dump("fix-fixed", pixels(image.get_layers()[0]))}
    hand = layer_from_file(image, "hand", CONFIG["hand_rgba"], 128, 128)
    report["hands"] = call("ctrlgen-fix-hands", image, [hand], model=CONFIG["model"], steps=4, seed=3,
                           guide_size=64, strength=0.5)
    report["layers"] = describe(image)
    image.delete()


def scenario_cancel(report):
    connect()
    image = new_image(160, 128)
    base = add_base_layer(image, 160, 128)
    before = pixels(base)
    open(os.path.join(OUT, "cancel-armed"), "w").close()
    # 150 small steps: long enough to be seen running, each short enough to stop at once.
    report["call"] = call("ctrlgen-generate", image, [base], model=CONFIG["model"], prompt="slow", steps=150,
                          seed=1, strength=0.99, model_size=False)
    report["layers"] = describe(image)
    report["base_unchanged"] = pixels(base) == before
    image.delete()


def xdotool(*args):
    return subprocess.run(["xdotool", *args], capture_output=True, text=True, timeout=60).stdout.split()


def answer_dialog(title, key, shot):
    """In the background: wait for the dialog, screenshot it, then press ``key`` in it."""
    script = (f"id=$(xdotool search --sync --name '{title}' | head -1); sleep 1.5; "
              f"import -window $id {shot}; xdotool windowfocus --sync $id; sleep 0.5; xdotool key {key}")
    return subprocess.Popen(["sh", "-c", script])


def image_window_key(keys):
    """Press ``keys`` in the image window (Xvfb has no window manager: focus it by hand)."""
    windows = xdotool("search", "--name", "GNU Image Manipulation Program|GIMP")
    for window in windows:
        xdotool("windowfocus", "--sync", window)
        xdotool("key", keys)
        break
    time.sleep(1.0)
    return windows


def scenario_gui(report):
    connect()
    image = new_image(512, 512)
    photo = layer_from_file(image, "photo", CONFIG["photo_rgba"], 512, 512)
    image.select_ellipse(Gimp.ChannelOps.REPLACE, 170, 90, 170, 150)
    Gimp.Selection.feather(image, 24.0)
    Gimp.Display.new(image)
    Gimp.displays_flush()
    # The Inpaint dialog, accepted with Return: a fresh profile has no last values, so it shows these.
    helper = answer_dialog("ctrlgen: Inpaint Selection", "Return", os.path.join(OUT, "gimp-inpaint-dialog.png"))
    report["interactive"] = call("ctrlgen-inpaint", image, [photo], run_mode=Gimp.RunMode.INTERACTIVE,
                                 model=CONFIG["model"], prompt="a golden helmet", steps=3, seed=4, model_size=False)
    helper.wait(60)
    report["after_run"] = [layer.get_name() for layer in image.get_layers()]
    Gimp.displays_flush()
    time.sleep(2)
    subprocess.run(["import", "-window", "root", os.path.join(OUT, "gimp-inpaint-result.png")], timeout=60)
    # One Edit › Undo (Ctrl+Z) removes the whole result; Redo brings it back.
    report["windows"] = image_window_key("ctrl+z")
    report["after_undo"] = [layer.get_name() for layer in image.get_layers()]
    image_window_key("ctrl+y")
    report["after_redo"] = [layer.get_name() for layer in image.get_layers()]
    # The last values are remembered: the dialog opens with the first run's prompt, not this one.
    helper = answer_dialog("ctrlgen: Inpaint Selection", "Return", os.path.join(OUT, "remembered.png"))
    report["remembered"] = call("ctrlgen-inpaint", image, [photo], run_mode=Gimp.RunMode.INTERACTIVE,
                                model=CONFIG["model"], prompt="ignored", steps=20, seed=9, model_size=True)
    helper.wait(60)
    report["after_second"] = [layer.get_name() for layer in image.get_layers()]
    # The Control Map dialog (widgets from canny's Param schema), cancelled with Escape.
    helper = answer_dialog("ctrlgen: Control Map", "Escape", os.path.join(OUT, "gimp-control-dialog.png"))
    report["control_cancel"] = call("ctrlgen-control-map", image, [photo], run_mode=Gimp.RunMode.INTERACTIVE,
                                    preprocessor="canny")
    helper.wait(60)
    report["after_cancel"] = [layer.get_name() for layer in image.get_layers()]


def main():
    report = {"gimp": Gimp.version()}
    for name in CONFIG["scenarios"]:
        entry = report[name] = {}
        started = time.monotonic()
        try:
            globals()["scenario_" + name](entry)
        except Exception:
            entry["exception"] = traceback.format_exc()
        entry["seconds"] = round(time.monotonic() - started, 2)
    with open(CONFIG["report"], "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=1)
    print("CTRLGEN_SCENARIOS_DONE")


_ = Gio  # imported for scenarios that save files
main()
