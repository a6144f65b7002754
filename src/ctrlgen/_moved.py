"""Old module paths that moved in the layout change of wave 2, still importable.

Code written against the earlier flat layout (``ctrlgen.core.specs``,
``ctrlgen.preprocessors.openpose``, ...) keeps working: importing an old path gives the module
at its new path (the same module object, so patches and ``isinstance`` agree) with a
:class:`DeprecationWarning` naming the new path. Plugin authors should import from ``ctrlgen``
(the public API); the internal paths may move again. The finder is appended to
``sys.meta_path`` by ``ctrlgen/__init__.py``, so it is asked only for names no real module has.
Old built-in plugin names (``CTRLGEN_DISABLE_PLUGINS=ctrlgen.preprocessors.openpose``) are
read through the same table.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import warnings

MOVED: dict[str, str] = {
    "ctrlgen.adapters._controlnet_inpaint": "ctrlgen.adapters.controlnet.inpaint",
    "ctrlgen.adapters._controlnet_modes": "ctrlgen.adapters.controlnet.modes",
    "ctrlgen.adapters._controlnet_union": "ctrlgen.adapters.controlnet.union",
    "ctrlgen.adapters._instantid": "ctrlgen.adapters.instantid.identitynet",
    "ctrlgen.adapters._ip_attach": "ctrlgen.adapters.ip_adapter.attach",
    "ctrlgen.adapters._ip_encoder": "ctrlgen.adapters.ip_adapter.encoder",
    "ctrlgen.adapters._ip_face": "ctrlgen.adapters.ip_adapter.face",
    "ctrlgen.adapters._ip_prepare": "ctrlgen.adapters.ip_adapter.prepare",
    "ctrlgen.adapters._lora": "ctrlgen.adapters.lora.loading",
    "ctrlgen.adapters._reference": "ctrlgen.adapters.reference.hooks",
    "ctrlgen.adapters._reference_layers": "ctrlgen.adapters.reference.layers",
    "ctrlgen.core.addon_rules": "ctrlgen.core.models.addon_rules",
    "ctrlgen.core.annotators": "ctrlgen.core.models.annotators",
    "ctrlgen.core.architecture": "ctrlgen.core.models.identify",
    "ctrlgen.core.architecture_rules": "ctrlgen.core.models.base_rules",
    "ctrlgen.core.builtin_architectures": "ctrlgen.core.engine.architectures",
    "ctrlgen.core.cli": "ctrlgen.core.cli.main",
    "ctrlgen.core.conditioning": "ctrlgen.core.engine.conditioning",
    "ctrlgen.core.default_sources": "ctrlgen.core.models.sources",
    "ctrlgen.core.demo": "ctrlgen.core.cli.demo",
    "ctrlgen.core.device": "ctrlgen.core.models.device",
    "ctrlgen.core.diffusers_configs": "ctrlgen.core.models.configs",
    "ctrlgen.core.engine": "ctrlgen.core.engine.engine",
    "ctrlgen.core.events": "ctrlgen.core.plugins.events",
    "ctrlgen.core.hookspecs": "ctrlgen.core.plugins.hookspecs",
    "ctrlgen.core.jobs": "ctrlgen.core.engine.jobs",
    "ctrlgen.core.masks": "ctrlgen.core.engine.masks",
    "ctrlgen.core.memory": "ctrlgen.core.engine.memory",
    "ctrlgen.core.model_layouts": "ctrlgen.core.models.layouts",
    "ctrlgen.core.models": "ctrlgen.core.models.store",
    "ctrlgen.core.plugins": "ctrlgen.core.plugins.manager",
    "ctrlgen.core.preprocess": "ctrlgen.core.engine.preprocess",
    "ctrlgen.core.preview": "ctrlgen.core.engine.preview",
    "ctrlgen.core.prompts": "ctrlgen.core.engine.prompts",
    "ctrlgen.core.pull": "ctrlgen.core.models.pull",
    "ctrlgen.core.registry": "ctrlgen.core.plugins.registry",
    "ctrlgen.core.samplers": "ctrlgen.core.engine.samplers",
    "ctrlgen.core.sheet": "ctrlgen.core.cli.sheet",
    "ctrlgen.core.single_file": "ctrlgen.core.models.loading",
    "ctrlgen.core.specs": "ctrlgen.core.plugins.specs",
    "ctrlgen.core.tasks": "ctrlgen.core.engine.tasks",
    "ctrlgen.core.tokenizer": "ctrlgen.core.models.tokenizer",
    "ctrlgen.host_bridges._server_images": "ctrlgen.host_bridges.server.images",
    "ctrlgen.host_bridges._server_jobs": "ctrlgen.host_bridges.server.jobs",
    "ctrlgen.host_bridges._server_models": "ctrlgen.host_bridges.server.models",
    "ctrlgen.host_bridges._server_security": "ctrlgen.host_bridges.server.security",
    "ctrlgen.host_bridges._server_uploads": "ctrlgen.host_bridges.server.uploads",
    "ctrlgen.host_bridges.krita_cli": "ctrlgen.host_bridges.install_cli",
    "ctrlgen.host_bridges.server": "ctrlgen.host_bridges.server.app",
    "ctrlgen.host_bridges.server_cli": "ctrlgen.host_bridges.server.cli",
    "ctrlgen.preprocessors._depth": "ctrlgen.preprocessors.depth.networks",
    "ctrlgen.preprocessors._depth_anything": "ctrlgen.preprocessors.depth.depth_anything",
    "ctrlgen.preprocessors._dwpose": "ctrlgen.preprocessors.pose.dwpose_onnx",
    "ctrlgen.preprocessors._face": "ctrlgen.preprocessors.face.detect",
    "ctrlgen.preprocessors._lines": "ctrlgen.preprocessors.lines.common",
    "ctrlgen.preprocessors._lines_manga": "ctrlgen.preprocessors.lines.manga",
    "ctrlgen.preprocessors._lines_softedge": "ctrlgen.preprocessors.lines.softedge_networks",
    "ctrlgen.preprocessors._mediapipe_pose": "ctrlgen.preprocessors.pose.mediapipe_landmarks",
    "ctrlgen.preprocessors._pose": "ctrlgen.preprocessors.pose.openpose_json",
    "ctrlgen.preprocessors._sam": "ctrlgen.preprocessors.sam.model",
    "ctrlgen.preprocessors._seg_models": "ctrlgen.preprocessors.segmentation.networks",
    "ctrlgen.preprocessors._seg_palettes": "ctrlgen.preprocessors.segmentation.palettes",
    "ctrlgen.preprocessors.dwpose": "ctrlgen.preprocessors.pose.dwpose",
    "ctrlgen.preprocessors.face_keypoints": "ctrlgen.preprocessors.face.keypoints",
    "ctrlgen.preprocessors.lineart": "ctrlgen.preprocessors.lines.lineart",
    "ctrlgen.preprocessors.mediapipe_face": "ctrlgen.preprocessors.face.mediapipe_face",
    "ctrlgen.preprocessors.mediapipe_pose": "ctrlgen.preprocessors.pose.mediapipe_pose",
    "ctrlgen.preprocessors.mediapipe_selfie": "ctrlgen.preprocessors.segmentation.mediapipe_selfie",
    "ctrlgen.preprocessors.mlsd": "ctrlgen.preprocessors.lines.mlsd",
    "ctrlgen.preprocessors.openpose": "ctrlgen.preprocessors.pose.openpose",
    "ctrlgen.preprocessors.scribble": "ctrlgen.preprocessors.lines.scribble",
    "ctrlgen.preprocessors.semantic_segmentation": "ctrlgen.preprocessors.segmentation.semantic",
    "ctrlgen.preprocessors.softedge": "ctrlgen.preprocessors.lines.softedge",
}


class _Alias:
    """A loader (importlib's protocol; importlib.abc costs 17 ms to import)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec):
        warnings.warn(f"{spec.name} moved to {self.target}; import it from there (or from ctrlgen)",
                      DeprecationWarning, stacklevel=2)
        module = importlib.import_module(self.target)
        self._own_spec = module.__spec__
        return module

    def exec_module(self, module) -> None:
        # The target module has run already; the import system set its __spec__ to the old
        # name's spec, so give it back its own.
        module.__spec__ = self._own_spec


class MovedModuleFinder:
    """Finds an old ctrlgen module path and answers with the module at its new path."""

    def find_spec(self, fullname, path=None, target=None):
        new = MOVED.get(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias(new))


def install() -> None:
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())


def current_name(name: str) -> str:
    """A module (or built-in plugin) name as it is now."""
    return MOVED.get(name, name)
