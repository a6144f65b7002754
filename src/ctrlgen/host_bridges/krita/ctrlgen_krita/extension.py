"""Menu actions (Tools > Scripts > ctrlgen …) that drive the docker, so they can get shortcuts."""

from __future__ import annotations

from typing import Any

from krita import DockWidget, Extension


def _panel(window: Any) -> Any:
    for dock in window.qwindow().findChildren(DockWidget):
        panel = getattr(dock, "panel", None)
        if panel is not None:
            return panel
    return None


class CtrlgenExtension(Extension):
    """Adds Generate, Inpaint, Cancel, Fix faces and Fix hands actions; each uses the window's ctrlgen
    docker (Fix shows the detections first, as the docker's buttons do)."""

    def setup(self) -> None:
        pass

    def createActions(self, window: Any) -> None:  # noqa: N802 - Krita's API name
        for action_id, text, run in (
            ("ctrlgen_generate", "ctrlgen: Generate", lambda p: p.on_generate(False)),
            ("ctrlgen_inpaint", "ctrlgen: Inpaint selection", lambda p: p.on_generate(True)),
            ("ctrlgen_cancel", "ctrlgen: Cancel", lambda p: p.controller.cancel()),
            ("ctrlgen_fix_faces", "ctrlgen: Fix faces", lambda p: p.on_detect("faces")),
            ("ctrlgen_fix_hands", "ctrlgen: Fix hands", lambda p: p.on_detect("hands")),
        ):
            action = window.createAction(action_id, text, "tools/scripts")
            action.triggered.connect(lambda _checked=False, run=run: self._with_panel(window, run))

    def _with_panel(self, window: Any, run: Any) -> None:
        panel = _panel(window)
        if panel is not None:
            run(panel)
