"""The architectures ctrlgen runs out of the box: SD1.5, SD2 and SDXL, through the same
``ctrlgen_architectures`` hook a plugin uses for SD3 or FLUX."""

from __future__ import annotations

from ctrlgen.core.engine.preview import LATENT_RGB
from ctrlgen.core.plugins.manager import hookimpl
from ctrlgen.core.plugins.specs import ArchitectureSpec

_SD = {
    ("txt2img", False): "StableDiffusionPipeline",
    ("img2img", False): "StableDiffusionImg2ImgPipeline",
    ("inpaint", False): "StableDiffusionInpaintPipeline",
    ("txt2img", True): "StableDiffusionControlNetPipeline",
    ("img2img", True): "StableDiffusionControlNetImg2ImgPipeline",
    ("inpaint", True): "StableDiffusionControlNetInpaintPipeline",
}
_SDXL = {
    ("txt2img", False): "StableDiffusionXLPipeline",
    ("img2img", False): "StableDiffusionXLImg2ImgPipeline",
    ("inpaint", False): "StableDiffusionXLInpaintPipeline",
    ("txt2img", True): "StableDiffusionXLControlNetPipeline",
    ("img2img", True): "StableDiffusionXLControlNetImg2ImgPipeline",
    ("inpaint", True): "StableDiffusionXLControlNetInpaintPipeline",
    ("txt2img", "union"): "StableDiffusionXLControlNetUnionPipeline",
    ("img2img", "union"): "StableDiffusionXLControlNetUnionImg2ImgPipeline",
    ("inpaint", "union"): "StableDiffusionXLControlNetUnionInpaintPipeline",
}


@hookimpl
def ctrlgen_architectures():
    yield ArchitectureSpec("sd15", _SD, "Stable Diffusion 1.x", latent_rgb=LATENT_RGB["sd"], native_size=512)
    yield ArchitectureSpec("sd2", _SD, "Stable Diffusion 2.x", latent_rgb=LATENT_RGB["sd"], native_size=768)
    yield ArchitectureSpec("sdxl", _SDXL, "Stable Diffusion XL", latent_rgb=LATENT_RGB["sdxl"], native_size=1024)
