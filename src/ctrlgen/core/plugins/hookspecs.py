"""Every hook a ctrlgen plugin can implement.

Hooks that contribute things *yield* frozen spec objects (``PreprocessorSpec``,
``AdapterSpec``, ...); they never call a registration function. Names are normalised
and must be unique per kind across all loaded plugins.

New hooks are added here, never by changing an existing signature: pluggy passes each
implementation only the arguments it names, so older plugins keep working.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import argparse

    from ctrlgen.core.plugins.events import JobEvent
    from ctrlgen.core.plugins.registry import AppContext
    from ctrlgen.core.plugins.specs import (
        AdapterSpec,
        ArchitectureSpec,
        DetectorSpec,
        HostBridgeSpec,
        ModelSourceSpec,
        PreprocessorSpec,
    )

hookspec = pluggy.HookspecMarker("ctrlgen")


@hookspec
def ctrlgen_preprocessors() -> Iterable[PreprocessorSpec]:
    """Yield the preprocessors (image -> control map) this plugin provides.

    Example::

        @hookimpl
        def ctrlgen_preprocessors():
            yield PreprocessorSpec(
                name="posterize",
                run=run_posterize,
                params=(Param("levels", "int", default=4, min=2, max=16),),
                description="Reduce each channel to a few levels",
            )
    """


@hookspec
def ctrlgen_detectors() -> Iterable[DetectorSpec]:
    """Yield detectors for the detailer (face/hand fixing): image in, boxes (and masks and
    keypoints where they have them) out. Names are unique across plugins.

    Example::

        @hookimpl
        def ctrlgen_detectors():
            yield DetectorSpec(name="my_faces", run=find_faces, finds=("face",),
                               params=(Param("confidence", "float", default=0.3, min=0, max=1),))
    """


@hookspec
def ctrlgen_adapters() -> Iterable[AdapterSpec]:
    """Yield the adapters (ControlNet, IP-Adapter, ...) this plugin provides.

    ``attach(context, params)`` returns a context manager that changes the job's
    pipeline on enter and restores it on exit.

    Example::

        @hookimpl
        def ctrlgen_adapters():
            yield AdapterSpec(name="my_adapter", attach=attach_my_adapter,
                              params=(Param("weight", "float", default=1.0, min=0, max=2),))
    """


@hookspec
def ctrlgen_architectures() -> Iterable[ArchitectureSpec]:
    """Yield the model architectures the engine can run, with their pipeline classes.

    SD1.5, SD2 and SDXL are built in this way; a plugin adds SD3, FLUX or its own family
    (the model store identifies ``sd3``/``flux`` checkpoints already).

    Example::

        @hookimpl
        def ctrlgen_architectures():
            yield ArchitectureSpec(
                name="sd3",
                pipelines={("txt2img", False): "StableDiffusion3Pipeline",
                           ("img2img", False): "StableDiffusion3Img2ImgPipeline",
                           ("inpaint", False): "StableDiffusion3InpaintPipeline"},
                prompt_weighting=False,  # T5 + CLIP: the pipeline encodes the prompt itself
                native_size=1024,
            )
    """


@hookspec
def ctrlgen_host_bridges() -> Iterable[HostBridgeSpec]:
    """Yield installers for host-application plugins (``ctrlgen install NAME``).

    Example::

        @hookimpl
        def ctrlgen_host_bridges():
            yield HostBridgeSpec(name="myeditor", install=install_fn, uninstall=uninstall_fn)
    """


@hookspec
def ctrlgen_model_sources() -> Iterable[ModelSourceSpec]:
    """Yield places where model weights are found, as :class:`ModelRoot` folders.

    Example::

        @hookimpl
        def ctrlgen_model_sources():
            yield ModelSourceSpec(
                name="invokeai",
                roots=lambda: [ModelRoot(Path.home() / "invokeai" / "models", layout="flat")],
            )
    """


@hookspec
def ctrlgen_job_event(event: JobEvent) -> None:
    """Observe a job's events (queued, started, progress, finished, error, cancelled).

    Called in the worker for every event; must return quickly and must not raise
    (an exception is logged and the observer is skipped, the job goes on).

    Example::

        @hookimpl
        def ctrlgen_job_event(event):
            if event.kind == "finished":
                print("done:", event.job_id)
    """


@hookspec(historic=True)
def ctrlgen_startup(context: AppContext) -> None:
    """Called once when ctrlgen starts a command or the server (historic: plugins
    registered later are called too). ``context`` gives the loaded registries.

    Example::

        @hookimpl
        def ctrlgen_startup(context):
            print(len(context.preprocessors), "preprocessors loaded")
    """


@hookspec
def ctrlgen_cli_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add sub-commands to the ``ctrlgen`` command line.

    ``subparsers`` is the ``argparse`` sub-parser collection of ``ctrlgen``: add a parser
    and give it a ``func(args) -> int`` default. Import heavy modules inside ``func``, not
    here: this hook runs for every ``ctrlgen`` command, ``--help`` included. A name that
    another plugin already took is refused (argparse raises; the plugin is isolated).
    Raise :class:`ctrlgen.core.errors.CtrlgenError` from ``func`` for a message without a
    traceback (exit status 2).

    Example::

        @hookimpl
        def ctrlgen_cli_commands(subparsers):
            p = subparsers.add_parser("hello", help="say hello")
            p.add_argument("name")
            p.set_defaults(func=lambda args: print("hello", args.name) or 0)
    """
