"""The ControlNet adapter passes the adapter contract (pipeline restored after every job)."""

from __future__ import annotations

from ctrlgen.testing.contracts import AdapterContract


class TestControlNetContract(AdapterContract):
    adapter = "controlnet"

    def adapter_job(self, image):
        return {
            "model": "tiny-sd15", "prompt": "a cat", "seed": 1, "steps": 2, "width": 64, "height": 64,
            "image": image,
            "control": [
                {"model": "tiny-controlnet-sd15", "preprocessor": "canny", "weight": 0.8},
                {"model": "tiny-controlnet-sd15", "preprocessor": "none", "guidance_end": 0.5},
            ],
        }
