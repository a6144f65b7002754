"""AdapterContract catches an adapter that restores the pipeline only when the job succeeds."""

from __future__ import annotations

import os
import re
import subprocess
import sys

# FreeU switched off only after a clean exit: a cancel ends the denoising loop normally, so only
# an exception inside the job shows the leak.
LEAKY_FREEU = """
import contextlib
from ctrlgen import AdapterSpec, hookimpl

@contextlib.contextmanager
def attach(context, uses):
    context.pipeline.unet.enable_freeu(s1=0.9, s2=0.2, b1=1.5, b2=1.6)
    yield context
    context.pipeline.unet.disable_freeu()

@hookimpl
def ctrlgen_adapters():
    yield AdapterSpec(name="leaky_freeu", attach=attach, description="restores on success only")
"""

CONTRACT_TESTS = """
from ctrlgen.testing.contracts import AdapterContract

class TestLeakyContract(AdapterContract):
    adapter = "leaky_freeu"

    def adapter_job(self, image):
        return {"model": "tiny-sd15", "prompt": "a cat", "seed": 1, "steps": 2, "width": 64, "height": 64,
                "adapters": [{"type": "leaky_freeu"}]}
"""


def test_a_leak_after_an_error_fails_the_contract_and_only_that_check(make_distribution, tmp_path,
                                                                       tiny_model_cache):
    site = make_distribution("ctrlgen-leaky", "0.1", {"leaky": "cg_leaky"}, {"cg_leaky": LEAKY_FREEU})
    (tmp_path / "suite").mkdir()
    (tmp_path / "suite" / "test_leaky.py").write_text(CONTRACT_TESTS)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
               CTRLGEN_TEST_CACHE_DIR=str(tiny_model_cache))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "suite"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    outcomes = {name: outcome for outcome, name in re.findall(
        r"^(PASSED|FAILED) suite/test_leaky.py::TestLeakyContract::(\w+)", result.stdout, flags=re.M)}
    assert outcomes == {
        "test_contract_adapter_spec_is_well_formed": "PASSED",
        "test_contract_restores_pipeline_after_success_and_cancel": "PASSED",
        "test_contract_plain_job_after_adapter_matches_fresh_pipeline": "PASSED",
        "test_contract_restores_pipeline_after_an_error_in_the_job": "FAILED",
    }, result.stdout[-4000:]
    assert "a plain job after a failed adapter job differs from a fresh pipeline's" in result.stdout
