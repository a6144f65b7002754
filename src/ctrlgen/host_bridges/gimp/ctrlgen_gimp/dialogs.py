"""The procedures' dialogs: GimpUi.ProcedureDialog, with lists filled from the server.

The procedure's own arguments are the dialog's state (GIMP remembers their last values between
runs and sessions). Arguments that name something the server has — the model, the sampler, the
preprocessor, the detector — get a combo box listing the server's capabilities (still editable,
so a name typed while the server is down works later); a control map's preprocessor params get
one widget each, built from the preprocessor's Param schema, and travel as the ``params`` JSON.
When the server cannot be reached the dialog says so at its top and still opens.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("GimpUi", "3.0")
gi.require_version("Gtk", "3.0")
from gi.repository import Gimp, GimpUi, GObject, Gtk  # noqa: E402

from . import gimpio  # noqa: E402
from .logic import (  # noqa: E402
    FIX_TARGETS,
    ParamField,
    checkpoints,
    error_message,
    param_fields,
    preprocessor_schema,
    preprocessors,
    samplers,
)

TITLES = {"ctrlgen-generate": "ctrlgen: Generate", "ctrlgen-inpaint": "ctrlgen: Inpaint Selection",
          "ctrlgen-control-map": "ctrlgen: Control Map", "ctrlgen-fix-faces": "ctrlgen: Fix Faces",
          "ctrlgen-fix-hands": "ctrlgen: Fix Hands", "ctrlgen-settings": "ctrlgen: Settings"}
HIDDEN = ("run-mode", "image", "drawables", "params")  # not shown as they are


def _capabilities() -> tuple[dict[str, Any], str]:
    """The server's capabilities, or ``({}, why not)``."""
    try:
        client = gimpio.load_connection().client(timeout=10)
    except Exception as exc:
        return {}, error_message(exc)
    try:
        return client.capabilities(), ""
    except Exception as exc:
        return {}, error_message(exc, client.url)
    finally:
        client.close()


def _choices(name: str, procedure: str, capabilities: dict[str, Any]) -> list[str] | None:
    """What the server offers for argument ``name`` (None: not a list argument)."""
    if name == "model":
        return checkpoints(capabilities)
    if name == "sampler":
        return samplers(capabilities)
    if name == "preprocessor":
        return preprocessors(capabilities)
    if name == "detector":
        label = FIX_TARGETS["faces" if procedure == "ctrlgen-fix-faces" else "hands"][0]
        return [""] + sorted(d["name"] for d in capabilities.get("detectors", []) if label in d.get("finds", []))
    return None


def _combo(config: Gimp.ProcedureConfig, name: str, items: list[str],
           on_change: Callable[[str], None] | None = None) -> Gtk.ComboBoxText:
    combo = Gtk.ComboBoxText.new_with_entry()
    current = config.get_property(name) or ""
    for item in items:
        combo.append_text(item)
    if not current and items and name != "detector":
        current = items[0]
        config.set_property(name, current)
    combo.get_child().set_text(current)

    def changed(widget: Gtk.ComboBoxText) -> None:
        config.set_property(name, widget.get_active_text() or "")
        if on_change is not None:
            on_change(widget.get_active_text() or "")

    combo.connect("changed", changed)
    return combo


class ParamsGrid:
    """One widget per Param of the chosen preprocessor; ``values()`` is what differs from the defaults."""

    def __init__(self) -> None:
        self.widget = Gtk.Grid(row_spacing=4, column_spacing=8)
        self.fields: list[tuple[ParamField, Gtk.Widget]] = []

    def show(self, fields: list[ParamField], saved: dict[str, Any]) -> None:
        for child in self.widget.get_children():
            self.widget.remove(child)
        self.fields = []
        for row, field in enumerate(fields):
            value = saved.get(field.name, field.default)
            widget = _param_widget(field, value)
            widget.set_tooltip_text(field.description or field.name)
            label = Gtk.Label(label=field.name.replace("_", " "), xalign=0.0)
            self.widget.attach(label, 0, row, 1, 1)
            self.widget.attach(widget, 1, row, 1, 1)
            self.fields.append((field, widget))
        self.widget.show_all()

    def values(self) -> dict[str, Any]:
        values = {}
        for field, widget in self.fields:
            value = _param_value(field, widget)
            if value is not None and value != field.default:
                values[field.name] = value
        return values


def _param_widget(field: ParamField, value: Any) -> Gtk.Widget:
    if field.kind in ("int", "float"):
        low = field.minimum if field.minimum is not None else -1e6
        high = field.maximum if field.maximum is not None else 1e6
        step = field.step or (1 if field.kind == "int" else 0.01)
        spin = Gtk.SpinButton.new_with_range(low, high, step)
        spin.set_digits(0 if field.kind == "int" else 3)
        spin.set_value(float(value if value is not None else low))
        return spin
    if field.kind == "bool":
        check = Gtk.CheckButton()
        check.set_active(bool(value))
        return check
    if field.kind == "choice":
        combo = Gtk.ComboBoxText()
        for choice in field.choices:
            combo.append_text(str(choice))
        if value in field.choices:
            combo.set_active(list(field.choices).index(value))
        return combo
    entry = Gtk.Entry()
    entry.set_text("" if value is None else value if isinstance(value, str) else json.dumps(value))
    return entry


def _param_value(field: ParamField, widget: Gtk.Widget) -> Any:
    if field.kind == "int":
        return int(widget.get_value())
    if field.kind == "float":
        return round(widget.get_value(), 6)
    if field.kind == "bool":
        return widget.get_active()
    if field.kind == "choice":
        index = widget.get_active()
        return field.choices[index] if index >= 0 else None
    text = widget.get_text().strip()
    if not text:
        return None
    try:
        return json.loads(text) if field.kind == "text" and text[:1] in "[{" else text
    except ValueError:
        return text


def _fine_steps(widget: Gtk.Widget, spec: GObject.ParamSpec) -> None:
    """Steps of a hundredth for a 0…1 value (GIMP's default step of 1 spans the whole range)."""
    span = spec.maximum - spec.minimum
    if isinstance(widget, GimpUi.LabelSpin) and span <= 2:
        widget.set_increments(0.01, 0.1)
        widget.set_digits(2)


def show(procedure: Gimp.Procedure, config: Gimp.ProcedureConfig, image: Gimp.Image | None) -> bool:
    """Show the procedure's dialog; True when the user pressed OK (``config`` then holds the values)."""
    GimpUi.init("ctrlgen-gimp")
    name = procedure.get_name()
    dialog = GimpUi.ProcedureDialog.new(procedure, config, TITLES.get(name, name))
    capabilities, problem = _capabilities() if name != "ctrlgen-settings" else ({}, "")
    header = Gtk.Grid(row_spacing=6, column_spacing=8, margin=8)
    row = 0
    if problem:
        note = Gtk.Label(label=problem, xalign=0.0, wrap=True, max_width_chars=60)
        header.attach(note, 0, row, 2, 1)
        row += 1
    params = ParamsGrid()
    listed = []

    def preprocessor_changed(preprocessor: str) -> None:
        try:
            fields = param_fields(preprocessor_schema(capabilities, preprocessor))
        except Exception:
            fields = []
        saved = json.loads(config.get_property("params") or "{}") if preprocessor == chosen[0] else {}
        params.show(fields, saved)

    chosen = [config.get_property("preprocessor") if name == "ctrlgen-control-map" else ""]
    for spec in procedure.get_arguments():
        items = _choices(spec.name, name, capabilities) if capabilities else None
        if items is None:
            continue
        listed.append(spec.name)
        on_change = preprocessor_changed if spec.name == "preprocessor" else None
        header.attach(Gtk.Label(label=spec.get_nick().replace("_", ""), xalign=0.0), 0, row, 1, 1)
        header.attach(_combo(config, spec.name, items, on_change), 1, row, 1, 1)
        row += 1
    if name == "ctrlgen-control-map" and capabilities:
        header.attach(params.widget, 0, row, 2, 1)
        preprocessor_changed(config.get_property("preprocessor"))
    shown = [spec.name for spec in procedure.get_arguments() if spec.name not in HIDDEN and spec.name not in listed]
    if name == "ctrlgen-control-map" and not capabilities:
        shown.append("params")  # no schema to build widgets from: the JSON as text
    for spec in procedure.get_arguments():
        if spec.name in shown and spec.value_type == GObject.TYPE_DOUBLE:
            _fine_steps(dialog.get_widget(spec.name, GObject.TYPE_NONE), spec)
    if shown:  # fill([]) would fill in every argument
        dialog.fill(shown)
    content = dialog.get_content_area()
    content.pack_start(header, False, False, 0)
    content.reorder_child(header, 0)
    header.show_all()
    accepted = dialog.run()
    if accepted and name == "ctrlgen-control-map" and capabilities:
        config.set_property("params", json.dumps(params.values()))
    dialog.destroy()
    return bool(accepted)
