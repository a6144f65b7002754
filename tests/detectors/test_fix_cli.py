"""``ctrlgen fix`` over files, folders and globs (core/engine/batch.py, detectors/fix_cli.py).

The detector is a cheap deterministic plugin installed as a real distribution (an entry point
on a site folder), so the same detector runs here and in the ``ctrlgen fix`` subprocesses that
the resume test kills with SIGKILL.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ctrlgen.core.cli.main import main
from ctrlgen.core.engine import batch
from ctrlgen.core.plugins import manager as plugins

pytestmark = pytest.mark.usefixtures("torch_single_thread")

PROBE = '''
from ctrlgen import Detection, DetectorSpec, Param, hookimpl


def run(image, threshold=60.0):
    """One box in the middle when the red channel is bright enough on average, else nothing."""
    if image[..., 0].mean() <= threshold:
        return []
    h, w = image.shape[:2]
    return [Detection((w / 4, h / 4, 3 * w / 4, 3 * h / 4), 0.9, "face")]


@hookimpl
def ctrlgen_detectors():
    yield DetectorSpec(name="probe_boxes", run=run, finds=("face",),
                       params=(Param("threshold", "float", default=60.0, min=0, max=255),))
'''

PASS = {"detector": "probe_boxes", "guide_size": 64, "max_size": 64}
SMALL = ["--set", "guide_size=64", "--set", "max_size=64"]  # repaint at 64 px, not 512
COMMON = ["--model", "tiny-sd15", "--steps", "3", "--seed", "5", "--quiet", *SMALL]


@pytest.fixture(scope="module")
def probe_site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site-packages")
    (site / "cg_probe_boxes.py").write_text(textwrap.dedent(PROBE))
    info = site / "cg_probe_boxes-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cg-probe-boxes\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[ctrlgen]\nprobe_boxes = cg_probe_boxes\n")
    return site


@pytest.fixture
def env(probe_site, tiny_model_root, tmp_path, monkeypatch):
    """The probe detector installed, the tiny models as the model root, the CPU, a scratch cwd."""
    monkeypatch.syspath_prepend(str(probe_site))
    monkeypatch.setenv("CTRLGEN_MODEL_ROOTS", str(tiny_model_root.root))
    monkeypatch.setenv("CTRLGEN_DEVICE", "cpu")
    monkeypatch.chdir(tmp_path)
    plugins.reset()
    yield tmp_path
    plugins.reset()
    sys.modules.pop("cg_probe_boxes", None)


def make_images(folder: Path, count: int, size: int = 64, seed: int = 0, suffix: str = ".png") -> list[Path]:
    """Noise images; every fourth is dark (the probe finds nothing there)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        if index % 4 == 3:
            pixels //= 8
        path = folder / f"img{index:03d}{suffix}"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def manifest_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def partial_files(*folders: Path) -> list[Path]:
    return [p for folder in folders for p in folder.rglob(f"*{batch.PARTIAL_SUFFIX}")]


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


# -- resume after kill -9 ------------------------------------------------------------------------


def test_a_batch_killed_with_sigkill_resumes_and_matches_an_uninterrupted_run(env, probe_site, tiny_model_root):
    source = env / "in"
    make_images(source, 200)
    passes = env / "passes.json"
    passes.write_text(json.dumps([PASS]))
    args = ["fix", str(source), "--passes", str(passes), *COMMON[:-len(SMALL)]]

    # The uninterrupted reference, in this process.
    assert main([*args, "--out", str(env / "reference")]) == 0
    reference = env / "reference"

    # The same batch in a subprocess, killed at random points and started again.
    out = env / "out"
    child_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(probe_site), *sys.path]),
                 "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "ctrlgen.core.cli.main", *args, "--out", str(out)]
    manifest = out / batch.MANIFEST_NAME
    chance = random.Random(12)
    kills = 0
    while kills < 4:
        process = subprocess.Popen(command, env=child_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        lines_before = manifest.read_bytes().count(b"\n") if manifest.exists() else 0
        target = lines_before + chance.randint(5, 30)
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline:
            if manifest.exists() and manifest.read_bytes().count(b"\n") >= target:
                time.sleep(chance.uniform(0, 0.05))  # anywhere: mid-decode, mid-denoise, mid-write
                break
            time.sleep(0.005)
        if process.poll() is not None:
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
    assert kills == 4
    finished = subprocess.run(command, env=child_env, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr

    records = manifest_lines(manifest)
    inputs = [r["input"] for r in records]
    assert len(inputs) == 200 and len(set(inputs)) == 200  # every image exactly once
    assert sorted(inputs) == sorted(str(p.resolve()) for p in source.iterdir())
    assert all(r["outcome"] in ("fixed", "nothing found") and r["seed"] == 5 for r in records)
    assert sum(r["outcome"] == "nothing found" for r in records) == 50
    assert not partial_files(env)
    assert sorted(p.name for p in out.glob("*.png")) == sorted(p.name for p in reference.glob("*.png"))
    for path in reference.glob("*.png"):
        assert np.array_equal(pixels(path), pixels(out / path.name)), path.name
    reference_records = {r["input"]: r["detail"] for r in manifest_lines(reference / batch.MANIFEST_NAME)}
    assert {r["input"]: r["detail"] for r in records} == reference_records


def test_a_run_over_a_finished_batch_does_nothing(env):
    make_images(env / "in", 3)
    assert main(["fix", "in", "--faces", "probe_boxes", "--out", "out", *COMMON]) == 0
    stamps = {p.name: p.stat().st_mtime_ns for p in (env / "out").glob("*.png")}
    assert main(["fix", "in", "--faces", "probe_boxes", "--out", "out", *COMMON]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (env / "out").glob("*.png")} == stamps
    assert len(manifest_lines(env / "out" / batch.MANIFEST_NAME)) == 3


def test_an_incomplete_last_line_and_a_partial_file_are_cleaned_up(env):
    paths = make_images(env / "in", 3)
    assert main(["fix", "in", "--faces", "probe_boxes", "--out", "out", *COMMON]) == 0
    manifest = env / "out" / batch.MANIFEST_NAME
    lines = manifest.read_text().splitlines(keepends=True)
    manifest.write_text(lines[0] + lines[1] + lines[2][:20])  # the writer was killed mid-line
    (env / "out" / paths[2].name).unlink()
    batch.partial_path(env / "out" / paths[2].name).write_bytes(b"\x89PNG half")
    assert main(["fix", "in", "--faces", "probe_boxes", "--out", "out", *COMMON]) == 0
    assert [Path(r["input"]).name for r in manifest_lines(manifest)] == [p.name for p in paths]
    assert not partial_files(env)
    assert (env / "out" / paths[2].name).is_file()


# -- inputs and outputs --------------------------------------------------------------------------


def test_files_folders_and_globs_each_image_once(env):
    make_images(env / "a", 2)
    make_images(env / "b" / "deep", 2, seed=1, suffix=".jpg")
    found = batch.collect_inputs(["a", "a/img000.png", "b/**/*.jpg"])
    assert [relative.as_posix() for _, relative in found] == ["img000.png", "img001.png", "img000.jpg", "img001.jpg"]
    recursive = batch.collect_inputs(["b"], recursive=True)
    assert [relative.as_posix() for _, relative in recursive] == ["deep/img000.jpg", "deep/img001.jpg"]
    assert batch.collect_inputs(["b"]) == []
    with pytest.raises(Exception, match="matches no file"):
        batch.collect_inputs(["nothing/*.png"])
    assert main(["fix", "missing-folder", "--faces", "probe_boxes", *COMMON]) == 2


def test_out_keeps_sub_folders_and_suffix_writes_beside_the_originals(env):
    make_images(env / "in" / "sub", 2)
    assert main(["fix", "in", "--recursive", "--faces", "probe_boxes", "--out", "out", *COMMON]) == 0
    assert sorted(p.relative_to(env / "out").as_posix() for p in (env / "out").rglob("*.png")) == [
        "sub/img000.png", "sub/img001.png"]
    assert main(["fix", "in/sub", "--faces", "probe_boxes", *COMMON]) == 0  # default: -fixed beside them
    assert sorted(p.name for p in (env / "in" / "sub").iterdir()) == [
        "img000-fixed.png", "img000.png", "img001-fixed.png", "img001.png"]
    assert (env / batch.MANIFEST_NAME).is_file()  # no --out: the manifest is in the current folder
    # A second run over the folder does not fix the outputs of the first.
    items = batch.plan_outputs(batch.collect_inputs(["in/sub"]), suffix="-fixed")
    assert [item.source.name for item in items] == ["img000.png", "img001.png"]
    assert main(["fix", "in/sub/img000.png", "in/sub/img001.png", "--faces", "probe_boxes", "--suffix", "_v2",
                 "--out", "v2", *COMMON]) == 0
    assert sorted(p.name for p in (env / "v2").glob("*.png")) == ["img000_v2.png", "img001_v2.png"]


def test_originals_are_never_overwritten_unless_asked(env, capsys):
    (original,) = make_images(env / "in", 1)
    before = original.read_bytes()
    assert main(["fix", "in", "--faces", "probe_boxes", "--out", "in", *COMMON]) == 2
    err = capsys.readouterr().err
    assert "would replace the original" in err and "--overwrite" in err
    assert main(["fix", "in", "--faces", "probe_boxes", "--suffix", "", *COMMON]) == 2
    assert original.read_bytes() == before
    assert main(["fix", "in", "--faces", "probe_boxes", "--overwrite", *COMMON]) == 0
    assert original.read_bytes() != before and sorted(p.name for p in (env / "in").iterdir()) == ["img000.png"]


def test_png_parameters_and_exif_are_kept_and_the_fix_parameters_added(env):
    env.joinpath("in").mkdir()
    info = PngInfo()
    info.add_text("parameters", "a portrait\nSteps: 20, Seed: 42")
    exif = Image.Exif()
    exif[0x010F] = "Camera maker"  # Make
    exif[0x0131] = "some editor"  # Software
    noise = np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(env / "in" / "p.png", pnginfo=info, exif=exif)
    Image.fromarray(noise).save(env / "in" / "j.jpg", exif=exif, quality=95)
    assert main(["fix", "in", "--faces", "probe_boxes", "--set", "denoise=0.5", "--prompt", "a face", "--out", "out",
                 *COMMON]) == 0
    with Image.open(env / "out" / "p.png") as fixed:
        assert fixed.text["parameters"] == "a portrait\nSteps: 20, Seed: 42"
        parameters = json.loads(fixed.text["ctrlgen-fix"])
        assert fixed.getexif()[0x010F] == "Camera maker"
    assert parameters["model"] == "tiny-sd15" and parameters["seed"] == 5 and parameters["prompt"] == "a face"
    assert parameters["detail"] == [{"detector": "probe_boxes", "denoise": 0.5, "guide_size": 64, "max_size": 64}]
    with Image.open(env / "out" / "j.jpg") as fixed:
        assert fixed.format == "JPEG" and fixed.getexif()[0x0131] == "some editor"
        assert json.loads(fixed.info["comment"])["detail"][0]["detector"] == "probe_boxes"


def test_a_bad_file_is_reported_in_the_manifest_and_skipped(env, capsys):
    make_images(env / "in", 2)
    (env / "in" / "broken.png").write_bytes(b"not a picture at all")
    (env / "in" / "notes.txt").write_text("not an image, not picked from a folder")
    assert main(["fix", "in", "in/notes.txt", "--faces", "probe_boxes", "--out", "out", "--seed", "5", "--steps",
                 "3", "--model", "tiny-sd15", *SMALL]) == 0
    records = {Path(r["input"]).name: r for r in manifest_lines(env / "out" / batch.MANIFEST_NAME)}
    assert set(records) == {"broken.png", "notes.txt", "img000.png", "img001.png"}
    assert records["broken.png"]["outcome"] == "error" and "not an image" in records["broken.png"]["error"]
    assert records["notes.txt"]["outcome"] == "error"
    assert sorted(p.name for p in (env / "out").glob("*.png")) == ["img000.png", "img001.png"]
    err = capsys.readouterr().err
    assert "skipped" in err and "broken.png" in err  # said under the progress bar
    assert "fixing" in err and "image/s]" in err and "<" in err  # the tqdm bar, elapsed<ETA, on stderr
    assert main(["fix", "in", "--faces", "probe_boxes", "--out", "out", *COMMON]) == 0  # not tried again
    assert len(manifest_lines(env / "out" / batch.MANIFEST_NAME)) == 4


# -- the passes ----------------------------------------------------------------------------------


def test_passes_file_quick_flags_and_set(env, capsys):
    make_images(env / "in", 1)
    (env / "passes.json").write_text(json.dumps({"detail": [{"detector": "probe_boxes", "seed": 100}]}))
    assert main(["fix", "in", "--passes", "passes.json", "--hands", "probe_boxes", "--set", "guide_size=64",
                 "--out", "out", *COMMON]) == 0
    (record,) = manifest_lines(env / "out" / batch.MANIFEST_NAME)
    assert [p["detector"] for p in record["detail"]] == ["probe_boxes", "probe_boxes"]
    assert [p["repainted"][0]["seed"] for p in record["detail"]] == [100, 5]  # the file's seed, the job's
    (env / "bad.json").write_text("[{")
    assert main(["fix", "in", "--passes", "bad.json", "--out", "o2", *COMMON]) == 2
    assert "is not JSON" in capsys.readouterr().err
    assert main(["fix", "in", "--out", "o3", *COMMON]) == 2
    assert "no fix passes" in capsys.readouterr().err
    assert main(["fix", "in", "--faces", "no_such_detector", "--out", "o4", *COMMON]) == 2
    assert "detail[0].detector" in capsys.readouterr().err
    assert main(["fix", "in", "--faces", "probe_boxes", "--set", "denoise=7", "--out", "o5", *COMMON]) == 2
    assert "denoise" in capsys.readouterr().err
    assert main(["fix", "in", "--faces", "probe_boxes", "--out", "o6", "--steps", "3", *SMALL]) == 2
    assert "--model is missing" in capsys.readouterr().err
    assert not (env / "o4").exists() or not list((env / "o4").glob("*.png"))  # checked before any image


def test_dry_run_draws_what_would_be_fixed_and_fixes_nothing(env, capsys):
    make_images(env / "in", 4)
    assert main(["fix", "in", "--faces", "probe_boxes", "--set", "dilate_erode=0", "--dry-run", "--sheet",
                 "sheet.png", "--cell", "64"]) == 0
    out = capsys.readouterr().out
    assert "img000.png: 1 to fix" in out and "img003.png: 0 to fix" in out
    assert sorted(p.name for p in (env / "in").iterdir()) == [f"img{i:03d}.png" for i in range(4)]
    sheet = np.asarray(Image.open(env / "sheet.png").convert("RGB")).astype(int)
    assert sheet.shape[1] >= 4 * 64
    first_cell = sheet[34:34 + 64, 6:6 + 64]  # title 28 px + pad 6
    original = np.asarray(Image.open(env / "in" / "img000.png").convert("RGB")).astype(int)
    tinted = np.abs(first_cell - original)[20:44, 20:44].mean()
    outside = np.abs(first_cell - original)[:10, :10].mean()
    assert tinted > 20 and outside < 1  # the mask is tinted inside the box, the rest untouched
    assert not (env / batch.MANIFEST_NAME).exists()


# -- overlap -------------------------------------------------------------------------------------


def test_decode_and_encode_overlap_the_fix(env, engine, monkeypatch):
    make_images(env / "in", 6)
    events: list[tuple[str, str, float]] = []
    lock = threading.Lock()

    def spy(name, function):
        def wrapped(*args, **kwargs):
            with lock:
                events.append((name + "-start", threading.current_thread().name, time.perf_counter()))
            try:
                return function(*args, **kwargs)
            finally:
                with lock:
                    events.append((name + "-end", threading.current_thread().name, time.perf_counter()))
        return wrapped

    from ctrlgen.core.engine import scripting

    monkeypatch.setattr(batch, "decode", spy("decode", batch.decode))
    monkeypatch.setattr(batch, "encode_bytes", spy("encode", batch.encode_bytes))
    monkeypatch.setattr(scripting, "fix", spy("fix", scripting.fix))
    options = batch.BatchOptions([PASS], {"model": "tiny-sd15", "steps": 3, "seed": 5})
    manifest = batch.Manifest(env / "m.jsonl")
    items = batch.plan_outputs(batch.collect_inputs(["in"]), env / "out")
    records = batch.run_batch(engine, items, options, manifest)
    manifest.close()
    assert len(records) == 6
    threads = {name: {t for n, t, _ in events if n.startswith(name)} for name in ("decode", "encode", "fix")}
    assert threads["fix"] == {"MainThread"}
    assert not threads["decode"] & threads["fix"] and not threads["encode"] & threads["fix"]
    decode_starts = [t for n, _, t in events if n == "decode-start"]
    # Decodes of later images were started before the first fix ended (prefetched).
    first_fix_end = min(t for n, _, t in events if n == "fix-end")
    assert sum(t < first_fix_end for t in decode_starts) >= 3


def test_a_manifest_that_is_not_ours_is_refused(env, capsys):
    make_images(env / "in", 1)
    (env / "other.jsonl").write_text('{"something": "else"}\n')
    assert main(["fix", "in", "--faces", "probe_boxes", "--manifest", "other.jsonl", "--out", "out", *COMMON]) == 2
    assert "other.jsonl line 1 is not a ctrlgen fix record" in capsys.readouterr().err
    assert not (env / "out").exists() or not list((env / "out").glob("*.png"))


def test_other_formats_are_written_as_png_and_a_failed_write_leaves_no_partial(env, monkeypatch, capsys):
    env.joinpath("in").mkdir()
    noise = np.random.default_rng(4).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(env / "in" / "a.gif")
    assert main(["fix", "in/a.gif", "--faces", "probe_boxes", "--out", "out", *COMMON]) == 0
    with Image.open(env / "out" / "a.png") as fixed:
        assert fixed.format == "PNG" and "ctrlgen-fix" in fixed.text

    def full_disk(self, fp, format=None, **params):
        fp.write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full_disk)
    assert main(["fix", "in/a.gif", "--faces", "probe_boxes", "--out", "full", *COMMON]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert not partial_files(env) and not (env / "full" / "a.png").exists()
    assert not (env / "full" / batch.MANIFEST_NAME).read_text()  # no line: the next run fixes it


def test_two_engines_fix_the_folder_to_the_same_pixels(env):
    make_images(env / "in", 5)
    assert main(["fix", "in", "--faces", "probe_boxes", "--out", "one", *COMMON]) == 0
    assert main(["fix", "in", "--faces", "probe_boxes", "--out", "two", "--devices", "cpu,cpu", *COMMON]) == 0
    names = sorted(p.name for p in (env / "one").glob("*.png"))
    assert len(names) == 5 and names == sorted(p.name for p in (env / "two").glob("*.png"))
    for name in names:
        assert np.array_equal(pixels(env / "one" / name), pixels(env / "two" / name)), name
    records = manifest_lines(env / "two" / batch.MANIFEST_NAME)
    assert sorted(Path(r["input"]).name for r in records) == names
    one = {Path(r["input"]).name: r["detail"] for r in manifest_lines(env / "one" / batch.MANIFEST_NAME)}
    assert {Path(r["input"]).name: r["detail"] for r in records} == one
