"""docs/cli.md (`ctrlgen plugins --json`) and docs/protocol.md (`/v1/capabilities`) name every
key of the schemas ctrlgen prints for plugins, preprocessors, detectors, adapters, params, weights and conflicts."""

from __future__ import annotations

import re
from pathlib import Path

from ctrlgen.core.plugins.manager import PluginInfo
from ctrlgen.core.plugins.registry import Conflict, Provider
from ctrlgen.core.plugins.specs import AdapterSpec, DetectorSpec, Param, PreprocessorSpec, WeightFile

DOCS = Path(__file__).resolve().parents[2] / "docs"


def section(doc: str, heading: str) -> str:
    text = (DOCS / doc).read_text(encoding="utf-8")
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start:end if end > 0 else None]


def keys_named(text: str) -> set[str]:
    return set(re.findall(r"\b\w+\b", text))


def samples() -> dict[str, dict]:
    param = Param("levels", "int", default=4, min=2, max=16, description="levels")
    weight = WeightFile("net.pth", source="org/repo")
    preprocessor = PreprocessorSpec(name="p", run=lambda image, mask=None: image, params=(param,), weights=(weight,))
    adapter = AdapterSpec(name="a", attach=lambda context, uses: None, params=(param,))
    detector = DetectorSpec(name="d", run=lambda image: [], finds=("face",), params=(param,), weights=(weight,))
    provider = Provider("plugin", "dist", "1.0")
    info = PluginInfo("plugin", "dist", "1.0", builtin=False,
                      specs={"preprocessors": [preprocessor], "detectors": [detector], "adapters": [adapter]})
    return {"param": param.to_json(), "weight": weight.to_json(), "preprocessor": preprocessor.to_json(),
            "detector": detector.to_json(), "adapter": adapter.to_json(), "plugin": info.to_json(),
            "conflict": Conflict("preprocessors", "p", (provider, provider)).to_json(),
            "provider": provider.to_json()}


def test_cli_doc_names_every_key_of_plugins_json():
    named = keys_named(section("cli.md", "## `ctrlgen plugins"))
    for what, data in samples().items():
        missing = set(data) - named
        assert not missing, f"docs/cli.md's `ctrlgen plugins` section does not name {what} keys {sorted(missing)}"


def test_protocol_doc_names_the_capabilities_schema_keys():
    named = keys_named(section("protocol.md", "`GET /v1/capabilities`"))
    data = samples()
    for what in ("param", "weight", "conflict", "provider"):
        missing = set(data[what]) - named
        assert not missing, f"docs/protocol.md's capabilities paragraph does not name {what} keys {sorted(missing)}"
    assert {"needs_weights", "weights", "conflicts"} <= named
