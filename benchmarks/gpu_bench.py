"""The GPU check's measurements: ctrlgen on real model shapes with random weights.

Random weights at the published shapes (SD1.5: 860M-parameter UNet, SDXL: 2.6B) cost what
trained ones cost; they are built on the device, written once as diffusers folders and
loaded through ctrlgen's model store like a user's files. Rows:

- per architecture and precision (SD1.5 + ControlNet at 512², 20 steps; SDXL + ControlNet at
  1024², 30 steps; fp16 and bf16): a ctrlgen job against the bare diffusers call on the same
  loaded modules (paired medians, target ≤ 1.03), seconds per image (SD1.5 target < 0.5 s on
  an H100), peak device memory of each;
- memory plans: the job under an artificial cap (``torch.cuda.set_per_process_memory_fraction``)
  sized so that the automatic plan must keep everything resident, offload per model, or
  offload sequentially — the plan chosen, whether the job ran, its peak and time;
- speed options on the bare pipeline: SDPA (diffusers' default) against classic attention,
  ``channels_last``, ``torch.compile`` of the UNet — seconds per image each.

``--cpu-smoke`` runs the same code on the tiny test models on the CPU in float32 at 64²
(the cap and compile rows say why they are skipped), so the script is known to work before
a GPU is at hand.

    python benchmarks/gpu_bench.py [--cpu-smoke] [--json out.json] [--budget-s S] [--only sd15|sdxl]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _timing import paired_medians, report  # noqa: E402

GIB = 1024**3
CASES = {  # architecture: (size, steps) at the real shapes
    "sd15": (512, 20),
    "sdxl": (1024, 30),
}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny models on the CPU, to check the script")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--repeat", type=int, default=None, help="paired repetitions (default 3, smoke 1)")
    parser.add_argument("--budget-s", type=float, default=330.0, help="skip what would start after this")
    parser.add_argument("--only", choices=sorted(CASES), action="append", help="architectures (default both)")
    parser.add_argument("--work", help="folder for the written models (default: a temporary one)")
    args = parser.parse_args(argv)

    import torch

    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        parser.error("no CUDA device; use --cpu-smoke to check the script on the CPU")
    device = "cpu" if smoke else "cuda"
    repeat = args.repeat or (1 if smoke else 3)
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []

    def left() -> bool:
        return time.perf_counter() - start < args.budget_s

    with contextlib.ExitStack() as stack:
        work = Path(args.work) if args.work else Path(stack.enter_context(tempfile.TemporaryDirectory(
            prefix="ctrlgen-gpu-")))
        for architecture in args.only or list(CASES):
            if not left():
                rows.append(_skipped(f"{architecture}: every row", "time budget spent"))
                continue
            model = _build(architecture, work, device, smoke)
            precisions = ("float32",) if smoke else ("float16", "bfloat16")
            for precision in precisions:
                if not left():
                    rows.append(_skipped(f"{architecture} {precision}", "time budget spent"))
                    continue
                rows += _job_vs_bare(architecture, model, device, precision, smoke, repeat)
            if architecture == "sd15":
                rows += _memory_plans(model, device, smoke, left)
                rows += _speed_options(model, device, smoke, repeat, left)
    title = (f"GPU check on {_device_name(device)} (torch {torch.__version__}); "
             f"ratio = ctrlgen or option / baseline")
    report(title, rows, args.json)
    return rows


# -- models -------------------------------------------------------------------------------


def _build(architecture: str, work: Path, device: str, smoke: bool) -> dict[str, Any]:
    """Write the pipeline and its ControlNet as diffusers folders; returns paths and sizes."""
    size, steps = (64, 2) if smoke else CASES[architecture]
    folder = work / architecture
    done = folder / ".complete"
    pipeline_dir, controlnet_dir = folder / "pipeline", folder / "controlnet"
    built_s = 0.0
    if not done.exists():
        began = time.perf_counter()
        import torch

        from ctrlgen.testing import tiny

        with torch.device(device):
            if smoke:
                components = (tiny.tiny_sdxl_components() if architecture == "sdxl" else tiny.tiny_sd15_components())
            else:
                components = _real_components(architecture)
        pipeline_cls = _pipeline_class(architecture, controlnet=False)
        if architecture != "sdxl":
            components["requires_safety_checker"] = False
        pipe = pipeline_cls(**components)
        if not smoke:
            pipe.to(torch.float16)
        pipe.save_pretrained(pipeline_dir, safe_serialization=True)
        with torch.device(device):
            controlnet = tiny.tiny_controlnet(pipe.unet) if smoke else _real_controlnet(pipe.unet)
        if not smoke:
            controlnet.to(torch.float16)
        controlnet.save_pretrained(controlnet_dir, safe_serialization=True)
        del pipe, controlnet, components
        _free(device)
        done.write_text("", encoding="utf-8")
        built_s = time.perf_counter() - began
    return {"architecture": architecture, "pipeline": pipeline_dir, "controlnet": controlnet_dir,
            "size": size, "steps": steps, "built_s": built_s, "control": _control_image(folder, size)}


def _real_components(architecture: str) -> dict[str, Any]:
    """Random weights at the published shapes (configs from the model repos)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from ctrlgen.core.models.tokenizer import load_clip_tokenizer
    from ctrlgen.testing import model_shapes, tiny

    def clip(hidden: int, layers: int, heads: int, act: str, projection: int) -> Any:
        return CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=4 * hidden,
                              num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                              hidden_act=act, projection_dim=projection, bos_token_id=0, eos_token_id=2,
                              pad_token_id=1)

    xl = architecture == "sdxl"
    unet = UNet2DConditionModel(**(model_shapes.SDXL_UNET if xl else model_shapes.SD15_UNET))
    vae = AutoencoderKL(**model_shapes.SD_VAE, scaling_factor=0.13025 if xl else 0.18215)
    components = {"unet": unet, "vae": vae, "text_encoder": CLIPTextModel(clip(768, 12, 12, "quick_gelu", 768)),
                  "tokenizer": load_clip_tokenizer("clip"), "scheduler": tiny._scheduler(architecture),
                  "image_encoder": None, "feature_extractor": None}
    if xl:
        components["text_encoder_2"] = CLIPTextModelWithProjection(clip(1280, 32, 20, "gelu", 1280))
        components["tokenizer_2"] = load_clip_tokenizer("openclip")
    else:
        components["safety_checker"] = None
    return components


def _real_controlnet(unet: Any) -> Any:
    from diffusers import ControlNetModel

    return ControlNetModel.from_unet(unet)


def _pipeline_class(architecture: str, controlnet: bool) -> Any:
    import diffusers

    xl = "XL" if architecture == "sdxl" else ""
    return getattr(diffusers, f"StableDiffusion{xl}{'ControlNet' if controlnet else ''}Pipeline")


def _control_image(folder: Path, size: int) -> Path:
    import numpy as np
    from PIL import Image

    path = folder / f"control-{size}.png"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.zeros((size, size, 3), np.uint8)
        pixels[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 255  # a square's edges to follow
        pixels[size // 4 + 4: 3 * size // 4 - 4, size // 4 + 4: 3 * size // 4 - 4] = 0
        Image.fromarray(pixels).save(path)
    return path


# -- rows ----------------------------------------------------------------------------------


def _job(model: dict[str, Any]) -> Any:
    from ctrlgen.core.engine.jobs import parse_job

    return parse_job({"model": str(model["pipeline"]), "prompt": "a lighthouse on a cliff, evening", "seed": 3,
                      "steps": model["steps"], "width": model["size"], "height": model["size"], "sampler": "Euler",
                      "control": [{"model": str(model["controlnet"]), "image": str(model["control"])}]})


def _engine(device: str, precision: str, memory: str = "none") -> Any:
    from ctrlgen.core.engine.engine import Engine

    return Engine(device=device, precision=precision, memory=memory)


def _bare(engine: Any, model: dict[str, Any]) -> Any:
    """diffusers' ControlNet pipeline on the engine's loaded modules (no second copy)."""
    import diffusers

    base = next(iter(engine._pipelines.values()))
    controlnet = next(iter(engine._controlnets.values()))
    bare = _pipeline_class(model["architecture"], controlnet=True).from_pipe(
        base, controlnet=controlnet, scheduler=diffusers.EulerDiscreteScheduler.from_config(base.scheduler.config))
    bare.set_progress_bar_config(disable=True)
    return bare


def _bare_call(bare: Any, model: dict[str, Any], device: str) -> Any:
    import torch
    from PIL import Image

    def call() -> None:
        control = Image.open(model["control"]).convert("RGB")
        bare(prompt="a lighthouse on a cliff, evening", image=control, num_inference_steps=model["steps"],
             width=model["size"], height=model["size"], generator=torch.Generator(device).manual_seed(3),
             output_type="np")
        _sync(device)
    return call


def _job_vs_bare(architecture: str, model: dict[str, Any], device: str, precision: str, smoke: bool,
                 repeat: int) -> list[dict[str, Any]]:
    label = f"{architecture} + ControlNet {model['size']}² {model['steps']} steps {precision}"
    engine = _engine(device, precision)
    job = _job(model)
    began = time.perf_counter()
    engine.run(job)  # loads
    load_s = time.perf_counter() - began
    bare = _bare(engine, model)

    def ours() -> None:
        engine.run(job)
        _sync(device)

    theirs = _bare_call(bare, model, device)
    ours_s, bare_s = paired_medians(ours, theirs, repeat=repeat)
    rows = [{"measure": f"{label}: ctrlgen job vs bare diffusers", "value": ours_s, "baseline": bare_s,
             "ratio": ours_s / bare_s, "target": "<= 1.03"},
            {"measure": f"{label}: seconds per image (first job, with loading: {load_s:.1f} s; "
                        f"models written in {model['built_s']:.1f} s)", "value": ours_s, "baseline": None,
             "ratio": None, "target": "< 0.5 s on an H100" if architecture == "sd15" and not smoke else ""}]
    if device == "cuda":
        ours_peak, bare_peak = _peak(ours), _peak(theirs)
        rows.append({"measure": f"{label}: peak device memory (GiB) ctrlgen vs bare", "value": ours_peak / GIB,
                     "baseline": bare_peak / GIB, "ratio": ours_peak / bare_peak, "target": "~1"})
    engine = bare = None  # free them before the next rows
    _free(device)
    return rows


def _memory_plans(model: dict[str, Any], device: str, smoke: bool, left: Any) -> list[dict[str, Any]]:
    """Under a cap sized for each plan, the automatic choice and whether the job fits."""
    from ctrlgen.core.engine import memory

    name = f"sd15 {model['size']}² fp16 under a cap"
    if smoke or device != "cuda":
        return [_skipped(f"{name}: memory plans", "needs CUDA (set_per_process_memory_fraction)")]
    import torch

    engine = _engine(device, "float16", memory="none")
    job = _job(model)
    engine.run(job)
    base = next(iter(engine._pipelines.values()))
    weights, largest = memory.weight_bytes(base)
    controlnet = sum(p.numel() * p.element_size() for p in next(iter(engine._controlnets.values())).parameters())
    del engine, base
    _free(device)
    margin = memory.MARGIN_FIXED + int(memory.MARGIN_PER_MEGAPIXEL * model["size"] ** 2 / 2**20)
    total = torch.cuda.mem_get_info()[1]
    caps = {"none": weights + controlnet + margin + GIB, "model": largest + controlnet + margin + GIB // 4,
            "sequential": margin + GIB // 2}
    rows = []
    for expected, cap in caps.items():
        if not left():
            rows.append(_skipped(f"{name} of {cap / GIB:.1f} GiB", "time budget spent"))
            continue
        torch.cuda.set_per_process_memory_fraction(min(cap / total, 1.0))
        engine = None
        try:
            engine = _engine(device, "float16", memory="auto")
            torch.cuda.reset_peak_memory_stats()
            began = time.perf_counter()
            result = engine.run(job)
            _sync(device)
            seconds = time.perf_counter() - began
            plan, fitted = result.memory.offload, "ran"
            peak = torch.cuda.max_memory_allocated() / GIB
        except Exception as exc:  # noqa: BLE001 — the row records what went wrong
            plan, fitted, seconds, peak = "?", f"failed: {type(exc).__name__}: {str(exc)[:120]}", 0.0, 0.0
        finally:
            del engine
            _free(device)
            torch.cuda.set_per_process_memory_fraction(1.0)
        rows.append({"measure": f"{name} of {cap / GIB:.1f} GiB: plan {plan} (expected {expected}), {fitted}, "
                                f"peak {peak:.2f} GiB", "value": seconds, "baseline": None, "ratio": None,
                     "target": f"plan {expected}, peak under the cap"})
    return rows


def _speed_options(model: dict[str, Any], device: str, smoke: bool, repeat: int, left: Any) -> list[dict[str, Any]]:
    import torch
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    precision = "float32" if smoke else "float16"
    engine = _engine(device, precision)
    engine.run(_job(model))
    bare = _bare(engine, model)
    default = _bare_call(bare, model, device)
    modules = (bare.unet, bare.controlnet)
    label = f"sd15 + ControlNet {model['size']}² {precision} bare diffusers"
    rows = []

    def option(name: str, apply: Any, undo: Any, target: str) -> None:
        if not left():
            rows.append(_skipped(f"{label}: {name}", "time budget spent"))
            return
        try:
            option_s, default_s = _paired_states(default, apply, undo, repeat)
        finally:
            undo()
        rows.append({"measure": f"{label}: {name} vs default (SDPA)", "value": option_s, "baseline": default_s,
                     "ratio": option_s / default_s, "target": target})

    option("classic attention", lambda: [m.set_attn_processor(AttnProcessor()) for m in modules],
           lambda: [m.set_attn_processor(AttnProcessor2_0()) for m in modules], "> 1 (SDPA is faster)")
    option("channels_last", lambda: [m.to(memory_format=torch.channels_last) for m in modules],
           lambda: [m.to(memory_format=torch.contiguous_format) for m in modules], "< 1 on GPUs")
    if smoke or device != "cuda":
        rows.append(_skipped(f"{label}: torch.compile", "needs CUDA (compiling on CPU here costs minutes)"))
    elif left():
        compiled = _pipeline_class("sd15", controlnet=True).from_pipe(bare)
        compiled.set_progress_bar_config(disable=True)
        compiled.unet = torch.compile(bare.unet)
        began = time.perf_counter()
        _bare_call(compiled, model, device)()
        compile_s = time.perf_counter() - began
        compiled_s, default_s = paired_medians(_bare_call(compiled, model, device), default, repeat=repeat)
        rows.append({"measure": f"{label}: torch.compile(unet) vs default (first call with compiling: "
                                f"{compile_s:.1f} s)", "value": compiled_s, "baseline": default_s,
                     "ratio": compiled_s / default_s, "target": "< 1"})
    else:
        rows.append(_skipped(f"{label}: torch.compile", "time budget spent"))
    engine = bare = None  # free them before the next rows
    _free(device)
    return rows


# -- helpers -------------------------------------------------------------------------------


def _paired_states(call: Any, apply: Any, undo: Any, repeat: int) -> tuple[float, float]:
    """Median seconds of ``call`` with an option applied and without, alternating; switching
    the option happens outside the timed part."""
    import statistics

    samples: dict[bool, list[float]] = {True: [], False: []}
    for index in range(repeat + 1):  # the first round warms both states up
        for state in ((True, False) if index % 2 == 0 else (False, True)):
            (apply if state else undo)()
            began = time.perf_counter()
            call()
            if index:
                samples[state].append(time.perf_counter() - began)
    return statistics.median(samples[True]), statistics.median(samples[False])


def _skipped(measure: str, why: str) -> dict[str, Any]:
    return {"measure": f"{measure} — skipped: {why}", "value": None, "baseline": None, "ratio": None, "target": ""}


def _peak(call: Any) -> int:
    import torch

    torch.cuda.reset_peak_memory_stats()
    call()
    return torch.cuda.max_memory_allocated()


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


def _device_name(device: str) -> str:
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name(0)
    return "CPU"


if __name__ == "__main__":
    main()
