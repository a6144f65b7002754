"""Run the examples in docs/*.md: ```python run blocks, ```console run blocks and file blocks."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from PIL import Image

from ctrlgen.core.cli.main import main
from ctrlgen.core.plugins import manager as plugins

DOCS = Path(__file__).resolve().parents[2] / "docs"
BLOCK = re.compile(r"^```(\w+)( run| file=\S+)?\n(.*?)^```$", re.M | re.S)


def runnable_docs():
    return sorted(p.name for p in DOCS.glob("*.md") if re.search(r"^```\w+ run$", p.read_text(), re.M))


@pytest.fixture
def docs_env(tiny_model_root, tmp_path, monkeypatch, torch_single_thread):
    import numpy as np
    from skimage import data

    sample = tmp_path / "sample.png"
    Image.fromarray(data.astronaut()).resize((96, 96)).save(sample)
    mask = np.zeros((96, 96), np.uint8)
    mask[32:64, 32:64] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    monkeypatch.setenv("CTRLGEN_MODEL_ROOTS", str(tiny_model_root.root))
    monkeypatch.setenv("CTRLGEN_DEVICE", "cpu")
    monkeypatch.chdir(tmp_path)
    plugins.reset()
    yield {"TINY_ROOT": tiny_model_root.root, "SAMPLE": str(sample)}
    plugins.reset()


def test_some_docs_have_runnable_examples():
    assert {"models.md", "cli.md", "jobs.md"} <= set(runnable_docs())


@pytest.mark.parametrize("doc", runnable_docs())
def test_doc_examples_run(doc, docs_env, capsys):
    namespace = dict(docs_env)
    ran = 0
    for language, mode, body in BLOCK.findall((DOCS / doc).read_text(encoding="utf-8")):
        body = body.replace("SAMPLE", docs_env["SAMPLE"]) if language != "python" else body
        if mode.startswith(" file="):
            Path(mode.split("=", 1)[1]).write_text(body, encoding="utf-8")
        elif mode == " run" and language == "python":
            exec(compile(body, f"{doc}:python", "exec"), namespace)
            ran += 1
        elif mode == " run" and language == "console":
            for line in body.splitlines():
                if line.startswith("$ ctrlgen "):
                    status = main(shlex.split(line[len("$ ctrlgen "):]))
                    captured = capsys.readouterr()
                    assert status == 0, f"{doc}: `{line}` exited {status}: {captured.err}"
                    ran += 1
    assert ran > 0
