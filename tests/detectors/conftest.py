"""Fixtures for detector tests: the real photos, and a model root for tiny detector weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ctrlgen.core.plugins import manager as plugins
from ctrlgen.testing.roots import using_model_roots


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="session")
def group_photo_path() -> Path:
    """insightface's ``t1.jpg`` (1280×886): six people at a card table, faces and hands."""
    import importlib.util

    spec = importlib.util.find_spec("insightface")
    if spec is None:
        pytest.fail("insightface is not installed (see requirements-nodeps.txt)")
    return Path(spec.origin).parent / "data" / "images" / "t1.jpg"


@pytest.fixture(scope="session")
def group_photo(group_photo_path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(group_photo_path).convert("RGB"))


@pytest.fixture(scope="session")
def detector_root(tmp_path_factory) -> Path:
    """An A1111 install whose ``models/adetailer`` and ``models/insightface`` hold tiny random
    detectors under the real file names (the tests put theirs there)."""
    root = tmp_path_factory.mktemp("webui")
    for folder in ("Stable-diffusion", "adetailer", "insightface/models/antelopev2"):
        (root / "models" / folder).mkdir(parents=True)
    (root / "extensions" / "sd-webui-controlnet" / "annotator" / "downloads").mkdir(parents=True)
    return root


@pytest.fixture
def use_detector_root(detector_root):
    """Point the model store at ``detector_root`` for this test; loaded models are dropped after."""
    plugins.reset()
    with using_model_roots(str(detector_root)):
        yield detector_root
    plugins.reset()
