"""Soft edges (HED, PiDiNet): grey edge strength, white on black, for the softedge ControlNet.

The ``_safe`` variants quantise the map to a few grey levels as upstream's ``safe=True``
does, so that faint patterns the network sees in flat areas do not reach the ControlNet.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ctrlgen.core.images import DETECT_RESOLUTION
from ctrlgen.core.models.annotators import unloader
from ctrlgen.core.plugins.manager import hookimpl
from ctrlgen.core.plugins.specs import PreprocessorSpec
from ctrlgen.preprocessors.lines.common import NETWORK_REQUIRES, network_owner, output_map
from ctrlgen.preprocessors.lines.softedge_networks import HED_WEIGHT, PIDINET_WEIGHT, hed_edges, pidinet_edges

PARAMS = (DETECT_RESOLUTION,)

VARIANTS = (
    # name, edge function, weight, safe, description
    ("softedge_hed", hed_edges, HED_WEIGHT, False,
     "HED soft edges (ControlNet's Apache-2 HED network, ControlNetHED.pth)"),
    ("softedge_hed_safe", hed_edges, HED_WEIGHT, True,
     "HED soft edges quantised to a few levels (safe: fewer hidden patterns)"),
    ("softedge_pidinet", pidinet_edges, PIDINET_WEIGHT, False,
     "PiDiNet soft edges (pixel difference network, table5_pidinet.pth)"),
    ("softedge_pidinet_safe", pidinet_edges, PIDINET_WEIGHT, True,
     "PiDiNet soft edges quantised to a few levels (safe: fewer hidden patterns)"),
)


def make_run(owner: str, edges: Callable[..., np.ndarray], safe: bool) -> Callable[..., np.ndarray]:
    def run(image: np.ndarray, mask: np.ndarray | None = None, *, detect_resolution: int) -> np.ndarray:
        height, width = image.shape[:2]
        return output_map(edges(owner, image, detect_resolution, safe=safe), width, height)

    run.__name__ = f"run_{owner}"
    return run


@hookimpl
def ctrlgen_preprocessors():
    for name, edges, weight, safe, description in VARIANTS:
        yield PreprocessorSpec(
            name=name,
            run=make_run(name, edges, safe),
            params=PARAMS,
            family="softedge",
            description=description,
            weights=(weight,),
            requires=NETWORK_REQUIRES,
            unload=unloader(network_owner(weight)),
        )
