"""The GIMP 3 plug-in: its procedures (Filters › ctrlgen) and what each one does.

Every procedure reads the active layer (and the selection), runs one request on the server,
and adds the result as a new layer directly above the active one, at its place, in one undo
group, so Edit › Undo removes it in one step. Nothing touches the image before the server has
answered: an error, or a cancel from the progress bar, leaves the image as it was. Failures
come back as the procedure's error message (GIMP shows it); never as an empty EXECUTION_ERROR.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from typing import Any

import gi

gi.require_version("Gimp", "3.0")
from gi.repository import Gimp, GLib, GObject  # noqa: E402

from . import gimpio  # noqa: E402
from .client_import import Client, ClientError, RawImage, Rect, model_architecture  # noqa: E402
from .jobs import run_job  # noqa: E402
from .logic import (  # noqa: E402
    CONTROL_DATA_PARASITE,
    Connection,
    GenerateSettings,
    ImageRefused,
    check_size,
    checkpoints,
    detector_for,
    error_message,
    fix_job,
    generate_job,
    inpaint_job,
    inpaint_region,
    layer_name,
    masked_result,
    parse_params,
    pixels_for_server,
    preprocessor_schema,
    to_rgba,
)

MENU = "<Image>/Filters/ctrlgen"
GENERATE, INPAINT, CONTROL_MAP = "ctrlgen-generate", "ctrlgen-inpaint", "ctrlgen-control-map"
FIX_FACES, FIX_HANDS, SETTINGS = "ctrlgen-fix-faces", "ctrlgen-fix-hands", "ctrlgen-settings"
RW = GObject.ParamFlags.READWRITE


# -- running a procedure ----------------------------------------------------------------------
def _guarded(procedure: Gimp.Procedure, work: Callable[[], Any], client_box: list[Client]) -> Gimp.ValueArray:
    """Run ``work``; any failure becomes an EXECUTION_ERROR whose message says what to do."""
    try:
        work()
    except (ClientError, ImageRefused) as exc:
        url = client_box[0].url if client_box else ""
        return procedure.new_return_values(Gimp.PDBStatusType.EXECUTION_ERROR, GLib.Error(error_message(exc, url)))
    except Exception as exc:  # an uncaught one would reach GIMP as an empty EXECUTION_ERROR
        traceback.print_exc()
        text = f"{error_message(exc)}\n\n{traceback.format_exc(limit=4)}"
        return procedure.new_return_values(Gimp.PDBStatusType.EXECUTION_ERROR, GLib.Error(text))
    finally:
        for client in client_box:
            client.close()
    return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, None)


def _connect(client_box: list[Client]) -> tuple[Client, dict[str, Any]]:
    client = gimpio.load_connection().client()
    client_box.append(client)
    return client, client.capabilities()


def _one_drawable(image: Gimp.Image, drawables: list[Gimp.Drawable]) -> Gimp.Drawable:
    gimpio.check_image(image)
    if len(drawables) != 1:
        raise ImageRefused(f"{len(drawables)} layers are selected; select exactly one layer (click it in the "
                           "Layers dialog).")
    drawable = drawables[0]
    if not isinstance(drawable, Gimp.Layer):
        raise ImageRefused("the active drawable is a mask or a channel; click a layer in the Layers dialog.")
    return drawable


def _settings(config: Gimp.ProcedureConfig, capabilities: dict[str, Any]) -> GenerateSettings:
    model = config.get_property("model") or next(iter(checkpoints(capabilities)), "")
    return GenerateSettings(model=model, prompt=config.get_property("prompt"),
                            negative_prompt=config.get_property("negative-prompt"), seed=config.get_property("seed"),
                            steps=config.get_property("steps"), cfg_scale=config.get_property("cfg-scale"),
                            sampler=config.get_property("sampler"), strength=config.get_property("strength"),
                            model_size=config.get_property("model-size"))


def _insert(image: Gimp.Image, above: Gimp.Drawable, name: str, area: Rect, rgba: bytes,
            size: tuple[int, int] | None = None) -> Gimp.Layer:
    image.undo_group_start()
    try:
        layer = gimpio.add_layer(image, above, name, area, rgba, size)
        image.set_selected_layers([layer])  # the result is the active layer, as after GIMP's own filters
    finally:
        image.undo_group_end()
    Gimp.displays_flush()
    return layer


def _progress(text: str) -> tuple[gimpio.Progress, Callable[[float | None, str | None], None]]:
    progress = gimpio.Progress(text)
    return progress, progress.update


def _result_seed(data: dict[str, Any]) -> Any:
    results = data.get("results") or [{}]
    return results[0].get("seed")


# -- the procedures' work ---------------------------------------------------------------------
def do_generate(image, drawables, config, client_box) -> None:
    drawable = _one_drawable(image, drawables)
    area = gimpio.drawable_rect(drawable)
    check_size(area)
    client, capabilities = _connect(client_box)
    settings = _settings(config, capabilities)
    job = generate_job(settings, area, model_architecture(capabilities, settings.model))
    images = {}
    if job["task"] == "img2img":
        pixels, channels = pixels_for_server(gimpio.read_rgba(drawable, area))
        images["image"] = RawImage(pixels, area.width, area.height, channels)
    progress, update = _progress(f"ctrlgen: {job['task']}")
    try:
        results, data = run_job(client, job, images, update)
    finally:
        progress.end()
    result = results[0]
    _insert(image, drawable, layer_name(job["task"], settings.prompt, _result_seed(data)), area,
            to_rgba(result.data, result.channels), (result.width, result.height))


def do_inpaint(image, drawables, config, client_box) -> None:
    drawable = _one_drawable(image, drawables)
    selection = gimpio.selection_bounds(image)
    if selection is None:
        raise ImageRefused("nothing is selected: select the area to repaint (an ellipse, a feathered lasso…), or "
                           "use Filters › ctrlgen › Generate for the whole layer.")
    region = inpaint_region(selection, gimpio.drawable_rect(drawable), config.get_property("context-px"))
    rgba = gimpio.read_rgba(drawable, region)
    mask = gimpio.read_selection(image, region)
    if not mask.strip(b"\x00"):
        raise ImageRefused("the selection does not touch the active layer: select inside the layer, or click the "
                           "layer the selection is on in the Layers dialog.")
    client, capabilities = _connect(client_box)
    settings = _settings(config, capabilities)
    job = inpaint_job(settings, region, model_architecture(capabilities, settings.model))
    pixels, channels = pixels_for_server(rgba)
    images = {"image": RawImage(pixels, region.width, region.height, channels),
              "mask": RawImage(mask, region.width, region.height, 1)}
    progress, update = _progress("ctrlgen: inpaint")
    try:
        results, data = run_job(client, job, images, update)
    finally:
        progress.end()
    result = results[0]
    if (result.width, result.height) != (region.width, region.height):
        raise ImageRefused(f"the server answered {result.width}×{result.height} for a {region.width}×{region.height} "
                           "inpaint; update ctrlgen (`pip install -U ctrlgen`) and restart `ctrlgen serve`.")
    _insert(image, drawable, layer_name("inpaint", settings.prompt, _result_seed(data)), region,
            masked_result(to_rgba(result.data, result.channels), mask))


def do_control_map(image, drawables, config, client_box) -> None:
    drawable = _one_drawable(image, drawables)
    area = gimpio.drawable_rect(drawable)
    client, capabilities = _connect(client_box)
    name = config.get_property("preprocessor")
    params = parse_params(config.get_property("params"), preprocessor_schema(capabilities, name), name)
    pixels, channels = pixels_for_server(gimpio.read_rgba(drawable, area))
    progress, _ = _progress(f"ctrlgen: {name} map")
    try:
        control, data = client.preprocess(name, RawImage(pixels, area.width, area.height, channels), params)
    finally:
        progress.end()
    layer = _insert(image, drawable, layer_name(f"{name} map"), area, to_rgba(control.data, control.channels),
                    (control.width, control.height))
    if data is not None:
        gimpio.attach_data(layer, CONTROL_DATA_PARASITE, json.dumps(data).encode("utf-8"))


def do_fix(target: str, image, drawables, config, client_box) -> None:
    drawable = _one_drawable(image, drawables)
    area = gimpio.drawable_rect(drawable)
    check_size(area)
    client, capabilities = _connect(client_box)
    settings = _settings(config, capabilities)
    detector = detector_for(capabilities, target, config.get_property("detector"))
    job = fix_job(settings, detector, settings.strength, config.get_property("guide-size"))
    pixels, channels = pixels_for_server(gimpio.read_rgba(drawable, area))
    progress, update = _progress(f"ctrlgen: fixing {target}")
    try:
        results, data = run_job(client, job, {"image": RawImage(pixels, area.width, area.height, channels)}, update)
    finally:
        progress.end()
    result = results[0]
    _insert(image, drawable, layer_name(f"fix {target}", settings.prompt), area,
            to_rgba(result.data, result.channels), (result.width, result.height))


# -- registration -----------------------------------------------------------------------------
def _add_generation_arguments(procedure: Gimp.Procedure, strength: float) -> None:
    procedure.add_string_argument("model", "_Model", "Checkpoint (empty: the server's first)", "", RW)
    procedure.add_string_argument("prompt", "_Prompt", "What to paint", "", RW)
    procedure.add_string_argument("negative-prompt", "_Negative prompt", "What to avoid", "", RW)
    procedure.add_int_argument("seed", "S_eed", "-1: a new random seed each run", -1, 2**31 - 1, -1, RW)
    procedure.add_int_argument("steps", "S_teps", "Denoising steps", 1, 150, 20, RW)
    procedure.add_double_argument("cfg-scale", "CF_G scale", "How closely to follow the prompt", 0.0, 30.0, 7.0, RW)
    procedure.add_string_argument("sampler", "Sa_mpler", "A1111 sampler name", "Euler a", RW)
    procedure.add_double_argument("strength", "Strengt_h",
                                  "Denoising strength (Generate: 1 paints anew, below 1 changes the layer)",
                                  0.01, 1.0, strength, RW)
    procedure.add_boolean_argument("model-size", "Generate at the model's si_ze",
                                   "Generate at the model's own size and fit the result to the layer (off: at the "
                                   "layer's size)", True, RW)


PROCEDURES = {
    # name: (menu label, blurb, work, the strength default or None)
    GENERATE: ("_Generate…", "Paint a new layer from the prompt (or change the active layer)", do_generate, 1.0),
    INPAINT: ("_Inpaint Selection…", "Repaint the selection into a new layer", do_inpaint, 1.0),
    CONTROL_MAP: ("_Control Map…", "A preprocessor's map (edges, depth, pose…) of the active layer as a new layer",
                  do_control_map, None),
    FIX_FACES: ("Fix _Faces…", "Find faces and repaint them into a new layer",
                lambda *args: do_fix("faces", *args), 0.4),
    FIX_HANDS: ("Fix _Hands…", "Find hands and repaint them into a new layer",
                lambda *args: do_fix("hands", *args), 0.4),
}


def _dialog(procedure: Gimp.Procedure, config: Gimp.ProcedureConfig, image: Gimp.Image | None) -> Gimp.ValueArray | None:
    """Show the dialog: None to go on, else the return values (cancelled, or the dialog failed)."""
    from . import dialogs

    try:
        if dialogs.show(procedure, config, image):
            return None
        return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, None)
    except Exception as exc:
        traceback.print_exc()
        return procedure.new_return_values(Gimp.PDBStatusType.EXECUTION_ERROR, GLib.Error(
            f"{error_message(exc)}\n\n{traceback.format_exc(limit=4)}"))


def _image_run(procedure, run_mode, image, drawables, config, data):
    name = procedure.get_name()
    if run_mode == Gimp.RunMode.INTERACTIVE:
        stopped = _dialog(procedure, config, image)
        if stopped is not None:
            return stopped
    work = PROCEDURES[name][2]
    client_box: list[Client] = []
    return _guarded(procedure, lambda: work(image, list(drawables), config, client_box), client_box)


def _settings_run(procedure, config, data):
    if config.get_property("run-mode") == Gimp.RunMode.INTERACTIVE:
        current = gimpio.load_connection()
        config.set_property("url", current.url)
        config.set_property("token", current.token)
        stopped = _dialog(procedure, config, None)
        if stopped is not None:
            return stopped
    connection = Connection(url=config.get_property("url").strip(), token=config.get_property("token").strip())
    gimpio.save_connection(connection)
    client_box: list[Client] = []

    def check() -> None:
        client = connection.client(timeout=10)
        client_box.append(client)
        version = client.health().get("version", "?")
        if config.get_property("run-mode") == Gimp.RunMode.INTERACTIVE:
            Gimp.message(f"ctrlgen: connected to the server at {client.url} (ctrlgen {version}).")

    return _guarded(procedure, check, client_box)


class CtrlgenPlugIn(Gimp.PlugIn):
    def do_set_i18n(self, name):
        return False  # no translations shipped

    def do_query_procedures(self):
        return [*PROCEDURES, SETTINGS]

    def do_create_procedure(self, name):
        if name == SETTINGS:
            procedure = Gimp.Procedure.new(self, name, Gimp.PDBProcType.PLUGIN, _settings_run, None)
            procedure.add_enum_argument("run-mode", "Run mode", "The run mode", Gimp.RunMode,
                                        Gimp.RunMode.NONINTERACTIVE, RW)
            procedure.add_string_argument("url", "Server _URL",
                                          "Empty: the server `ctrlgen serve` runs on this computer", "", RW)
            procedure.add_string_argument("token", "_Token", "Empty: the token in ctrlgen's config folder", "", RW)
            procedure.set_menu_label("_Settings…")
            procedure.set_documentation("Where the ctrlgen server is", "Server address and token for the ctrlgen "
                                        "procedures (empty: the local `ctrlgen serve`)", name)
        else:
            label, blurb, _, strength = PROCEDURES[name]
            procedure = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, _image_run, None)
            procedure.set_image_types("*")
            procedure.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE)
            procedure.set_menu_label(label)
            procedure.set_documentation(blurb, f"{blurb}. Needs a running `ctrlgen serve` (Filters › ctrlgen › "
                                        "Settings says where).", name)
            if strength is not None:
                _add_generation_arguments(procedure, strength)
            if name == INPAINT:
                procedure.add_int_argument("context-px", "Conte_xt", "Pixels around the selection the model sees",
                                           0, 512, 32, RW)
            if name in (FIX_FACES, FIX_HANDS):
                procedure.add_string_argument("detector", "_Detector", "Empty: the server's preferred one", "", RW)
                procedure.add_int_argument("guide-size", "_Guide size", "Each find is repainted with its shorter "
                                           "side at this size", 64, 2048, 512, RW)
            if name == CONTROL_MAP:
                procedure.add_string_argument("preprocessor", "_Preprocessor", "Its name (`ctrlgen plugins`)",
                                              "canny", RW)
                procedure.add_string_argument("params", "P_arams", "Its params as a JSON object", "", RW)
        procedure.add_menu_path(MENU)
        procedure.set_attribution("ctrlgen", "ctrlgen", "2026")
        return procedure


def main() -> None:
    Gimp.main(CtrlgenPlugIn.__gtype__, sys.argv)
