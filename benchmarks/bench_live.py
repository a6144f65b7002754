"""The live channel (``GET /v1/live``, a WebSocket): transport cost against raw loopback TCP, and
frames per second, on the tiny SD1.5 model (CPU).

- ``roundtrip 1024``: one live frame whose 1024² RGBA canvas is new every round (sent whole:
  ``diff=False``), img2img on the tiny model at a moderate 256² (live painting's resolution; the
  tiny UNet's attention at 1024² takes minutes on a CPU), the RGBA result back as raw pixels on
  the same connection. ``transport_s`` is the round trip less the server's run time for the frame
  (``run_ms`` in its result), against ``raw_tcp_s``: a socket server (own process) on one
  kept-open connection that reads the same byte count and writes the result's byte count back —
  the limit of loopback. The goal is ``transport_ratio`` <= 2. The two are timed alternately
  (``_timing``'s paired rounds), medians.
- ``fps 512``: frames at 512² one after another (send, wait for the result, send the next),
  changing only the seed (the canvas is not re-sent): ``1 / median round trip``, and what a
  painter sees while strokes keep changing a 64² box of the canvas (``fps_stroke``: the patch
  travels, not the canvas).

    python benchmarks/bench_live.py [--repeat N] [--json benchmarks/results/live-cpu-2core.json]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _server import served  # noqa: E402
from _timing import report  # noqa: E402

RAW_SERVER = r"""
import socket, struct
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
conn, _ = listener.accept()
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
buffer = bytearray(64 * 2**20)
view = memoryview(buffer)
while True:
    head = conn.recv(16, socket.MSG_WAITALL)
    if len(head) < 16:
        break
    up, down = struct.unpack("<QQ", head)
    got = 0
    while got < up:
        got += conn.recv_into(view[got:up])
    conn.sendall(view[:down])
"""


@contextlib.contextmanager
def live_server(work: Path):
    from ctrlgen.testing.tiny import write_model_root

    root = write_model_root(work / "root", "a1111", architectures=("sd15",)).root
    env = {"CTRLGEN_MODEL_ROOTS": str(root), "CTRLGEN_DEVICE": "cpu",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with served(work / "config", ["serve", "--port", "0", "--preload", "tiny-sd15", "--no-outputs"], env) as client:
        yield client


def canvas(size: int, shade: int = 0):
    import numpy as np

    from ctrlgen.host_bridges.client import RawImage

    y, x = np.mgrid[0:size, 0:size]
    pixels = np.stack([x % 256, y % 256, (x + y + shade) % 256, np.full_like(x, 255)], -1).astype(np.uint8)
    return RawImage(bytearray(pixels.tobytes()), size, size, 4)


def job(size: int) -> dict:
    return {"model": "tiny-sd15", "prompt": "an astronaut", "seed": 3, "steps": 4, "strength": 0.5,
            "sampler": "LCM", "cfg_scale": 1.5, "width": size, "height": size, "image": "live:canvas"}


GENERATE_1024_AT = 256  # the 1024² region is generated at a moderate resolution (the tiny UNet's
# attention at 1024² takes minutes on a CPU); the host scales the result onto the region


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=7, help="paired rounds (live vs raw TCP)")
    parser.add_argument("--fps-frames", type=int, default=5, help="frames timed at 512² (each way)")
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args(argv)

    from ctrlgen.host_bridges.client import LiveSession

    rows = []
    load_before = list(os.getloadavg())  # others share this machine: the figures move with its load
    with tempfile.TemporaryDirectory() as folder, live_server(Path(folder)) as client:
        raw_process = subprocess.Popen([sys.executable, "-c", RAW_SERVER], stdout=subprocess.PIPE, text=True)
        raw = socket.create_connection(("127.0.0.1", int(raw_process.stdout.readline())))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            # -- 1024² round trip vs raw TCP ----------------------------------------------------
            size = 1024
            with LiveSession(client, diff=False, timeout=120) as live:
                image = canvas(size)
                live.set(job(GENERATE_1024_AT))
                state = {"n": 0, "run": [], "live": [], "raw": []}

                def live_round():
                    state["n"] += 1
                    image.data[0] = state["n"] % 256  # new content: the canvas travels whole
                    start = time.perf_counter()
                    frame = live.send(images={"canvas": image})
                    result = live.wait(frame)[-1]
                    elapsed = time.perf_counter() - start
                    assert result.status == "done", result
                    state["live"].append(elapsed)
                    state["run"].append(result.info["run_ms"] / 1000)
                    state.setdefault("receive", []).append(result.info["receive_ms"] / 1000)
                    state.setdefault("wait", []).append(result.info["wait_ms"] / 1000)
                    state["result_bytes"] = result.image.width * result.image.height * result.image.channels

                live_round()  # warm-up (also learns the result's size)
                up = size * size * 4
                down = state["result_bytes"]
                state.update(live=[], run=[], receive=[], wait=[])
                view = memoryview(bytearray(down))

                def raw_round():
                    start = time.perf_counter()
                    raw.sendall(struct.pack("<QQ", up, down))
                    raw.sendall(memoryview(image.data))
                    got = 0
                    while got < down:
                        got += raw.recv_into(view[got:])
                    state["raw"].append(time.perf_counter() - start)

                raw_round()
                state["raw"] = []
                for index in range(args.repeat):
                    for function in ((live_round, raw_round) if index % 2 == 0 else (raw_round, live_round)):
                        function()
                transports = [total - run for total, run in zip(state["live"], state["run"], strict=True)]
                raw_s = statistics.median(state["raw"])
                transport_s = statistics.median(transports)
                rows.append({"case": "roundtrip 1024", "bytes_up": up, "bytes_down": down,
                             "live_s": statistics.median(state["live"]), "run_s": statistics.median(state["run"]),
                             "transport_s": transport_s, "raw_tcp_s": raw_s,
                             "server_receive_s": statistics.median(state["receive"]),
                             "server_wait_s": statistics.median(state["wait"]),
                             "transport_ratio": round(transport_s / raw_s, 2)})

            # -- frames per second at 512² -------------------------------------------------------------
            size = 512
            with LiveSession(client, timeout=120) as live:
                image = canvas(size)
                first = live.send(job(size), images={"canvas": image})
                live.wait(first)
                times, runs = [], []
                for seed in range(args.fps_frames):
                    start = time.perf_counter()
                    result = live.wait(live.send({"seed": seed}))[-1]
                    times.append(time.perf_counter() - start)
                    runs.append(result.info["run_ms"] / 1000)
                stroke_times = []
                import numpy as np

                pixels = np.frombuffer(image.data, np.uint8).reshape(size, size, 4)
                for index in range(args.fps_frames):
                    x = 32 + index * 16 % 400
                    pixels[200:264, x:x + 64, 0] = (index * 37) % 256  # a stroke: the patch travels
                    start = time.perf_counter()
                    result = live.wait(live.send(images={"canvas": image}))[-1]
                    stroke_times.append(time.perf_counter() - start)
                rows.append({"case": "fps 512", "frames": args.fps_frames,
                             "frame_s": statistics.median(times), "run_s": statistics.median(runs),
                             "fps": round(1 / statistics.median(times), 2),
                             "fps_stroke": round(1 / statistics.median(stroke_times), 2),
                             "transport_s": statistics.median(times) - statistics.median(runs)})
        finally:
            raw.close()
            raw_process.terminate()
            raw_process.wait()
    for row in rows:
        report(f"live channel: {row['case']} (tiny SD1.5, CPU)", [row])
    if args.json:
        import json

        from _timing import command_line

        Path(args.json).write_text(json.dumps({"title": "live channel (tiny SD1.5, CPU, loaded 2-core machine)",
                                               "rows": rows, "python": sys.version.split()[0],
                                               "load_average_before_after": [load_before, list(os.getloadavg())],
                                               "command": command_line()}, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
