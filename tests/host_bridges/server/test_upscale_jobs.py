"""The upscale task and hires fix through a real `ctrlgen serve` on loopback, with the
standard-library client: capabilities, checks before queueing, results at the upscaled size."""

from __future__ import annotations

import numpy as np
import pytest

from ctrlgen.host_bridges.client import Client, ClientError, RawImage
from ctrlgen.host_bridges.server.models import Capabilities

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def upscale_root(tmp_path_factory, tiny_model_cache, tiny_sd15):
    from ctrlgen.testing.tiny import write_model_root
    from ctrlgen.testing.tiny_upscalers import write_tiny_upscaler

    root = write_model_root(tmp_path_factory.mktemp("upscale-server-root"), "a1111", architectures=("sd15",),
                            cache_dir=tiny_model_cache)
    write_tiny_upscaler(root.models_dir / "ESRGAN", "compact", scale=4, name="4x-compact")
    return root.root


def test_an_upscale_job_runs_through_the_server(server_factory, upscale_root):
    server = server_factory(model_root=upscale_root)
    with Client(server.url, token=server.token) as client:
        capabilities = client.capabilities()
        Capabilities.model_validate(capabilities)
        features = {feature["name"]: feature for feature in capabilities["features"]}
        assert features["upscale"]["field"] == "upscale" and "lanczos" in features["upscale"]["resamplers"]
        assert {p["name"]: p["default"] for p in features["upscale"]["params"]}["denoise"] == 0.3
        assert features["hires_fix"]["tasks"] == ["txt2img"]
        upscalers = [m["name"] for m in capabilities["models"] if m["category"] == "upscale_models"]
        assert upscalers == ["4x-compact"]

        picture = np.zeros((40, 48, 3), np.uint8)
        picture[:, :, 0] = np.linspace(0, 255, 48, dtype=np.uint8)
        job = {"task": "upscale", "model": "tiny-sd15", "prompt": "a photo", "steps": 4, "seed": 2,
               "upscale": {"upscaler": "4x-compact", "scale": 4, "tile_size": 128, "overlap": 32, "denoise": 0.5}}
        results = client.run(job, images={"image": RawImage(picture.tobytes(), 48, 40, 3)})
        assert [(r.width, r.height) for r in results] == [(192, 160)]

        # checked before queueing: the field path and the way out
        with pytest.raises(ClientError, match="upscale.upscaler") as caught:
            client.run({**job, "upscale": {"upscaler": "8x-missing"}},
                       images={"image": RawImage(picture.tobytes(), 48, 40, 3)})
        assert "lanczos" in str(caught.value)

        hires = client.run({"model": "tiny-sd15", "width": 64, "height": 64, "steps": 2, "seed": 1,
                            "hires": {"scale": 1.5, "steps": 2, "denoise": 0.5}})
        assert [(r.width, r.height) for r in hires] == [(96, 96)]
