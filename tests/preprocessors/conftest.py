"""Fixtures for preprocessor tests: a model root for (tiny) annotator weights, real photos."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ctrlgen.core.models import annotators
from ctrlgen.testing.roots import annotator_downloads  # noqa: F401  (re-exported for tests)


@pytest.fixture(scope="session")
def annotator_root(tmp_path_factory) -> Path:
    """An A1111 install root; put weights under :func:`annotator_downloads` folders.

    Session-scoped and shared by every preprocessor family's tests: each writes its own
    (tiny, random) weight files under its own sub-folder, with the real file names.
    """
    root = tmp_path_factory.mktemp("webui")
    (root / "models" / "Stable-diffusion").mkdir(parents=True)
    (root / "extensions" / "sd-webui-controlnet" / "annotator" / "downloads").mkdir(parents=True)
    return root



@pytest.fixture
def use_annotator_root(annotator_root, monkeypatch):
    """Point the model store at ``annotator_root`` for this test; loaded models are dropped after."""
    monkeypatch.setenv("CTRLGEN_MODEL_ROOTS", str(annotator_root))
    annotators.unload()
    annotators.reset_default_store()
    yield annotator_root
    annotators.unload()
    annotators.reset_default_store()


@pytest.fixture
def real_weight(monkeypatch):
    """``find(WeightFile) -> Path`` over the user's real model folders, or skip the test.

    The real folders are ``CTRLGEN_WEIGHTS_ROOTS`` (tests/conftest.py keeps the user's
    configured roots and HF cache there); never the tiny test weights' root.
    """
    from ctrlgen.core.errors import ModelNotFoundError

    if os.environ.get("CTRLGEN_WEIGHTS_ROOTS"):
        monkeypatch.setenv("CTRLGEN_MODEL_ROOTS", os.environ["CTRLGEN_WEIGHTS_ROOTS"])
    else:
        monkeypatch.delenv("CTRLGEN_MODEL_ROOTS", raising=False)
    annotators.unload()
    annotators.reset_default_store()

    def find(weight):
        try:
            return annotators.default_store().find_weight(weight)
        except ModelNotFoundError:
            pytest.skip(f"the real {weight.filename} is not in the model store (get it from {weight.source})")

    yield find
    annotators.unload()
    annotators.reset_default_store()


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="session")
def group_photo() -> np.ndarray:
    """insightface's ``t1.jpg``: a group of people with faces and hands."""
    import importlib.util

    from PIL import Image

    spec = importlib.util.find_spec("insightface")
    if spec is None:
        pytest.fail("insightface is not installed (see requirements-nodeps.txt)")
    path = Path(spec.origin).parent / "data" / "images" / "t1.jpg"
    return np.asarray(Image.open(path).convert("RGB"))
