"""Random-weight annotator files in the real formats, for testing the line and edge preprocessors.

Each writer puts one file under its real name, with the real key names, dtype and container
of the published file, so that the real loading code runs on it:

- ``sk_model.pth`` / ``sk_model2.pth``: ``Generator(3, 1, 3)`` state dicts, full size, fp32;
- ``netG.pth``: the anime ``UnetGenerator`` (8 levels) with ``module.`` keys, 4 channels wide
  instead of 64 (the loader reads the width from the file);
- ``erika.pth``: the manga line network, widths 2..32 instead of 24..384 (read from the file);
- ``ControlNetHED.pth``: ``ControlNetHED_Apache2``, full size, fp16 like the real file;
- ``table5_pidinet.pth``: ``{"epoch", "state_dict"}`` with ``module.`` keys, full size;
- ``mlsd_large_512_fp32.pth``: ``MobileV2_MLSD_Large``, full size, fp32.

Writers are seeded and idempotent (an existing file is kept), and leave the global torch RNG
as it was. (:func:`ctrlgen.testing.roots.using_model_roots` points the store at such a folder.)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOTS_VARIABLE = "CTRLGEN_MODEL_ROOTS"


def write_seeded(folder: Path, filename: str, seed: int, make: Callable[[], Any]) -> Path:
    """``folder/filename`` holding ``torch.save(make())`` made under ``seed`` (the global RNG is
    left as it was); kept if it already exists, written atomically otherwise."""
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    if not path.is_file():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            payload = make()
        partial = path.with_name(path.name + ".partial")
        torch.save(payload, partial)
        partial.replace(path)
    return path


def _randomise_batch_norms(network: Any) -> Any:
    """Give BatchNorm layers non-trivial running statistics (the defaults make them identities)."""
    import torch

    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return network


def write_lineart(folder: Path) -> tuple[Path, Path]:
    """``sk_model.pth`` and ``sk_model2.pth`` (plain state dicts)."""

    def make():
        from controlnet_aux.lineart import Generator

        return Generator(3, 1, 3).state_dict()

    return write_seeded(folder, "sk_model.pth", 1, make), write_seeded(folder, "sk_model2.pth", 2, make)


def write_lineart_anime(folder: Path, width: int = 4) -> Path:
    def make():
        import functools

        from controlnet_aux.lineart_anime import UnetGenerator
        from torch import nn

        norm = functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
        network = UnetGenerator(3, 1, 8, width, norm_layer=norm, use_dropout=False)
        return {f"module.{key}": value for key, value in network.state_dict().items()}

    return write_seeded(folder, "netG.pth", 3, make)


def write_manga_line(folder: Path, widths: tuple[int, ...] = (2, 4, 8, 16, 32), head: int = 2) -> Path:
    def make():
        from ctrlgen.preprocessors.lines.manga import manga_line_network

        state = _randomise_batch_norms(manga_line_network(widths, head)).state_dict()
        # The network maps 0..255 grey to 0..255; spread the random output over that range.
        state["conv15.model.2.weight"] = state["conv15.model.2.weight"] * 4
        state["conv15.model.2.bias"] = state["conv15.model.2.bias"] + 200
        return state

    return write_seeded(folder, "erika.pth", 4, make)


def write_hed(folder: Path) -> Path:
    def make():
        from controlnet_aux.hed import ControlNetHED_Apache2

        return {key: value.half() for key, value in ControlNetHED_Apache2().state_dict().items()}

    return write_seeded(folder, "ControlNetHED.pth", 5, make)


def write_pidinet(folder: Path) -> Path:
    def make():
        from controlnet_aux.pidi.model import pidinet

        state = pidinet().state_dict()
        # Random fusion weights leave every pixel near 0.5; a stronger classifier spreads them out.
        state["classifier.weight"] = state["classifier.weight"] * 100
        return {"epoch": 19, "state_dict": {f"module.{key}": value for key, value in state.items()}}

    return write_seeded(folder, "table5_pidinet.pth", 6, make)


def write_mlsd(folder: Path) -> Path:
    def make():
        from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large

        state = _randomise_batch_norms(MobileV2_MLSD_Large()).state_dict()
        # A stronger head spreads the random centre scores and gives segments a few pixels long.
        state["block23.conv3.weight"] = state["block23.conv3.weight"] * 10
        return state

    return write_seeded(folder, "mlsd_large_512_fp32.pth", 7, make)
