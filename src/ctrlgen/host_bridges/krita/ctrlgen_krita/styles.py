"""Styles: JSON presets that bundle a checkpoint, LoRAs, sampler, steps, CFG and prompt
templates, so a look is one choice in the docker.

A style is a file ``<name>.json`` in the ``krita-styles`` folder of ctrlgen's config folder
(``ctrlgen config-dir``), for example::

    {"name": "Ink sketch", "model": "dreamshaper_8", "loras": [["ink_style", 0.8]],
     "sampler": "DPM++ 2M Karras", "steps": 24, "cfg_scale": 6.5,
     "prompt": "{prompt}, ink drawing, cross-hatching", "negative_prompt": "{prompt}, colour, blurry"}

``{prompt}`` in a template is the docker's prompt (or negative prompt); a template without it
is appended after it. Every field but ``name`` is optional; what a style leaves out keeps the
docker's value. Names of models and LoRAs are the server's (its capabilities list them).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .logic import DocumentError, Settings

FIELDS = ("model", "sampler", "steps", "cfg_scale")


@dataclass
class Style:
    name: str
    model: str = ""
    loras: list[tuple[str, float]] = field(default_factory=list)
    sampler: str = ""
    steps: int = 0
    cfg_scale: float = 0.0
    prompt: str = "{prompt}"
    negative_prompt: str = "{prompt}"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model, "loras": [list(lora) for lora in self.loras],
                "sampler": self.sampler, "steps": self.steps, "cfg_scale": self.cfg_scale,
                "prompt": self.prompt, "negative_prompt": self.negative_prompt}


def styles_folder(config_folder: Path) -> Path:
    return Path(config_folder) / "krita-styles"


def parse_style(data: Any, source: str) -> Style:
    """A style from its JSON; a wrong field raises DocumentError naming the file and the field."""
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not data["name"].strip():
        raise DocumentError(f"{source}: a style is a JSON object with a non-empty \"name\"")
    unknown = set(data) - {"name", "loras", "prompt", "negative_prompt", *FIELDS}
    if unknown:
        raise DocumentError(f"{source}: unknown field(s) {', '.join(sorted(unknown))}; a style has name, model, "
                            "loras, sampler, steps, cfg_scale, prompt, negative_prompt")
    try:
        loras = [(str(name), float(weight)) for name, weight in data.get("loras", [])]
        return Style(data["name"].strip(), str(data.get("model", "")), loras, str(data.get("sampler", "")),
                     int(data.get("steps", 0)), float(data.get("cfg_scale", 0.0)),
                     str(data.get("prompt", "{prompt}")), str(data.get("negative_prompt", "{prompt}")))
    except (TypeError, ValueError) as exc:
        raise DocumentError(f"{source}: {exc} (loras is a list of [name, weight]; steps a whole number)") from exc


def load_styles(folder: Path) -> tuple[list[Style], list[str]]:
    """Every style in ``folder`` by name, and a message for each file that could not be read."""
    styles, problems = [], []
    for path in sorted(Path(folder).glob("*.json")) if Path(folder).is_dir() else []:
        try:
            styles.append(parse_style(json.loads(path.read_text(encoding="utf-8")), str(path)))
        except (OSError, ValueError, DocumentError) as exc:
            problems.append(str(exc))
    return sorted(styles, key=lambda s: s.name.lower()), problems


def save_style(folder: Path, style: Style) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", style.name).strip("_") or "style"
    path = folder / f"{slug}.json"
    path.write_text(json.dumps(style.to_json(), indent=1), encoding="utf-8")
    return path


def _fill(template: str, text: str) -> str:
    if "{prompt}" in template:
        return template.replace("{prompt}", text)
    return ", ".join(part for part in (text, template) if part)


def apply_style(style: Style, settings: Settings, capabilities: dict[str, Any] | None = None) -> Settings:
    """``settings`` as the style makes them (a copy): its model, sampler, steps and CFG, the
    prompts through its templates, its LoRAs as ``<lora:name:weight>`` tags. With the server's
    ``capabilities``, a model it does not have is refused, naming it."""
    from .logic import copy_settings

    if capabilities and style.model and style.model not in {m.get("name") for m in capabilities.get("models", [])}:
        raise DocumentError(f"Style {style.name!r} uses the model {style.model!r}, which the server does not have: "
                            "put it in a model folder and Connect, or edit the style.")
    changes: dict[str, Any] = {name: getattr(style, name) for name in FIELDS if getattr(style, name)}
    prompt = _fill(style.prompt, settings.prompt)
    tags = " ".join(f"<lora:{name}:{weight:g}>" for name, weight in style.loras)
    changes["prompt"] = f"{prompt} {tags}".strip() if tags else prompt
    changes["negative_prompt"] = _fill(style.negative_prompt, settings.negative_prompt)
    return copy_settings(settings, **changes)
