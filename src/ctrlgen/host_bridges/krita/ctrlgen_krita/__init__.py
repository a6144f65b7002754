"""ctrlgen for Krita: a docker that sends the canvas, selection and control layers to a
running ``ctrlgen serve`` and brings the results back as layers.

Krita imports this package at start when the plugin is enabled (Settings > Configure Krita >
Python Plugin Manager, or ``ctrlgen install krita``, which enables it). Outside Krita (tests,
``ctrlgen install``) importing it registers nothing.
"""

from __future__ import annotations

try:
    from krita import DockWidgetFactory, DockWidgetFactoryBase, Krita
except ImportError:  # not inside Krita
    Krita = None

DOCKER_ID = "ctrlgen_docker"


def _register() -> None:
    app = Krita.instance()
    if app is None:  # pragma: no cover - Krita always has an instance once it imports plugins
        return
    from .docker import CtrlgenDocker
    from .extension import CtrlgenExtension

    app.addDockWidgetFactory(DockWidgetFactory(DOCKER_ID, DockWidgetFactoryBase.DockRight, CtrlgenDocker))
    app.addExtension(CtrlgenExtension(app))


if Krita is not None:
    _register()
