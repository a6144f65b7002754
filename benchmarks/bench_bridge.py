"""Bridge round trip: a canvas + mask up and a result down over loopback, three ways.

For each size (1024², 2048², 4096²), one round trip sends an RGBA canvas and a grey mask and
gets an RGB image of the same size back:

- ctrlgen: a real ``ctrlgen serve`` (own process) and the standard-library client. Both
  uploads carry new bytes every round (a changed pixel), so they are hashed, asked for (HEAD)
  and sent; the result comes from ``POST /v1/preprocess`` with ``tile_resample`` at rate 1 on
  the uploaded mask, which returns it as RGB at its size: the cheapest real server route that
  answers a full-size image (a job cannot produce a 4096² result in reasonable time on the tiny
  CPU model, and the canvas itself would add ``to_rgb``'s RGBA compositing, seconds at 4096²
  here, which is preprocessing, not bridge).
- raw TCP: a socket server (own process) that receives the same byte counts and sends the
  result's byte count back, on one kept-open connection — the limit of loopback.
- PNG bridge: what other plugins do. The client encodes canvas and mask as PNG, base64s them
  into JSON and POSTs to a minimal ``http.server`` (own process), which decodes both and
  answers the RGB result as a base64 PNG in JSON, decoded again by the client.

The sides are timed alternately (``_timing.paired_medians``). A breakdown row splits the
ctrlgen round trip: hashing, uploads, and the preprocess call (the server's compute, measured
separately in-process, plus the download).

    python benchmarks/bench_bridge.py [--sizes 1024,2048,4096] [--repeat N] [--save | --json F --txt F]

``BENCH_SERVE="path/to/script.py"`` starts the server with another entry point (``script.py
serve --port 0 ...``), for trying a server change against the same baselines.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import hashlib
import io
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _timing import median_seconds, paired_medians, report  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SERVE = os.environ.get("BENCH_SERVE", "-m ctrlgen.core.cli.main").split()

# The raw TCP server: per round a 24-byte header (canvas, mask and result sizes), the two
# bodies read into one preallocated buffer, then the result's bytes sent back.
RAW_SERVER = r"""
import socket, struct
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
buffers = {}
def fill(conn, view):
    got = 0
    while got < len(view):
        n = conn.recv_into(view[got:])
        if not n:
            return False
        got += n
    return True
while True:
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    header = bytearray(24)
    while fill(conn, memoryview(header)):
        up_a, up_b, down = struct.unpack("<QQQ", header)
        inbox = buffers.setdefault(("in", up_a + up_b), bytearray(up_a + up_b))
        if not fill(conn, memoryview(inbox)):
            break
        conn.sendall(buffers.setdefault(("out", down), bytes(down)))
    conn.close()
"""

# The PNG-in-base64-JSON bridge server (what A1111's API and several plugins do).
PNG_SERVER = r"""
import base64, io, json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from PIL import Image

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        canvas = Image.open(io.BytesIO(base64.b64decode(request["image"])))
        canvas.load()
        mask = Image.open(io.BytesIO(base64.b64decode(request["mask"])))
        mask.load()
        buffer = io.BytesIO()
        canvas.convert("RGB").save(buffer, format="PNG")
        body = json.dumps({"images": [base64.b64encode(buffer.getvalue()).decode("ascii")]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def _start(code: str, env: dict | None = None) -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    port = int(process.stdout.readline())
    return process, port


@contextlib.contextmanager
def ctrlgen_server(config: Path):
    """``ctrlgen serve`` on a free port with its own config folder; yields a discovered Client."""
    from ctrlgen.host_bridges.client import Client

    env = dict(os.environ, CTRLGEN_CONFIG_DIR=str(config), OMP_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, *SERVE, "serve", "--port", "0",
                                "--max-upload-memory", "4G", "--max-upload-bytes", "512M"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (config / "server.json").is_file():
            if process.poll() is not None:
                raise RuntimeError(f"ctrlgen serve exited: {process.stderr.read()}")
            if time.monotonic() > deadline:
                raise RuntimeError("ctrlgen serve did not write server.json within 120 s")
            time.sleep(0.1)
        client = Client.discover(config)
        try:
            yield client
        finally:
            client.close()
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def make_inputs(size: int) -> tuple[bytearray, bytearray]:
    """A photo upscaled to ``size`` as RGBA (opaque) and an elliptic grey mask."""
    from PIL import Image, ImageDraw
    from skimage import data

    photo = Image.fromarray(data.astronaut()).resize((size, size), Image.BICUBIC).convert("RGBA")
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).ellipse((size // 4, size // 5, size * 3 // 4, size * 4 // 5), fill=255)
    return bytearray(photo.tobytes()), bytearray(mask.tobytes())


class Rounds:
    """One round trip per method, on already open connections."""

    def __init__(self, size: int, client, raw_port: int, png_port: int):
        import http.client

        self.size = size
        self.canvas, self.mask = make_inputs(size)
        self.result_bytes = size * size * 3
        self.client = client
        self.counter = 0
        self.raw = socket.create_connection(("127.0.0.1", raw_port))
        self.raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.raw_result = bytearray(self.result_bytes)
        self.png = http.client.HTTPConnection("127.0.0.1", png_port, timeout=600)
        self.timings: dict[str, list[float]] = {"hash": [], "upload": [], "preprocess_until_headers": [],
                                                "download": []}

    def close(self) -> None:
        self.raw.close()
        self.png.close()

    def _new_content(self) -> None:
        # A changed pixel each round: new hashes, so both images are really uploaded.
        self.counter += 1
        stamp = struct.pack("<Q", self.counter)
        self.canvas[:8] = stamp
        self.mask[:8] = stamp

    def ctrlgen(self, breakdown: bool = False) -> None:
        from ctrlgen.host_bridges.client import RawImage

        self._new_content()
        n = self.size
        if breakdown:  # what the client's hashing costs (the uploads below hash again)
            before = time.perf_counter()
            hashlib.sha256(self.canvas).digest()
            hashlib.sha256(self.mask).digest()
            self.timings["hash"].append(time.perf_counter() - before)
        start = time.perf_counter()
        _, mask_ref = self.client.upload_many([RawImage(self.canvas, n, n, 4), RawImage(self.mask, n, n, 1)])
        uploaded = time.perf_counter()
        if not breakdown:
            result, _ = self.client.preprocess("tile_resample", mask_ref, params={"down_sampling_rate": 1.0})
            if len(result.data) != self.result_bytes:
                raise AssertionError(f"ctrlgen returned {len(result.data)} bytes, expected {self.result_bytes}")
            return
        # The same preprocess call by hand, to split the server's time from the download.
        payload = json.dumps({"preprocessor": "tile_resample", "image": mask_ref,
                              "params": {"down_sampling_rate": 1.0}, "format": "raw"}).encode()
        conn = self.client._thread_connection()[0]
        conn.request("POST", "/v1/preprocess", body=payload, headers=self.client._headers(
            {"Content-Type": "application/json"}))
        response = conn.getresponse()
        answered = time.perf_counter()
        body = response.read()
        done = time.perf_counter()
        if len(body) != self.result_bytes:
            raise AssertionError(f"ctrlgen returned {len(body)} bytes, expected {self.result_bytes}")
        self.timings["upload"].append(uploaded - start)
        self.timings["preprocess_until_headers"].append(answered - uploaded)
        self.timings["download"].append(done - answered)

    def raw_tcp(self) -> None:
        self._new_content()
        self.raw.sendall(struct.pack("<QQQ", len(self.canvas), len(self.mask), self.result_bytes))
        self.raw.sendall(self.canvas)
        self.raw.sendall(self.mask)
        view, got = memoryview(self.raw_result), 0
        while got < self.result_bytes:
            count = self.raw.recv_into(view[got:])
            if not count:
                raise ConnectionError("raw TCP server closed the connection")
            got += count

    def png_bridge(self) -> None:
        from PIL import Image

        self._new_content()
        n = self.size
        encoded = {}
        for name, pixels, mode in (("image", self.canvas, "RGBA"), ("mask", self.mask, "L")):
            buffer = io.BytesIO()
            Image.frombuffer(mode, (n, n), bytes(pixels), "raw", mode, 0, 1).save(buffer, format="PNG")
            encoded[name] = base64.b64encode(buffer.getvalue()).decode("ascii")
        self.png.request("POST", "/bridge", body=json.dumps(encoded).encode(),
                         headers={"Content-Type": "application/json"})
        answer = json.loads(self.png.getresponse().read())
        result = Image.open(io.BytesIO(base64.b64decode(answer["images"][0])))
        pixels = result.convert("RGB").tobytes()
        if len(pixels) != self.result_bytes:
            raise AssertionError(f"PNG bridge returned {len(pixels)} bytes, expected {self.result_bytes}")


def server_compute_seconds(size: int, mask: bytearray, repeat: int) -> float:
    """What the preprocess route computes for the result (tile_resample of the mask), in-process."""
    import numpy as np

    from ctrlgen.core.engine.preprocess import preprocess

    pixels = np.frombuffer(bytes(mask), np.uint8).reshape(size, size)
    return median_seconds(lambda: preprocess("tile_resample", pixels, down_sampling_rate=1.0), repeat=repeat)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1024,2048,4096", help="square sizes, comma separated")
    parser.add_argument("--repeat", type=int, default=5, help="paired repetitions (ctrlgen vs raw TCP)")
    parser.add_argument("--png-repeat", type=int, default=3, help="paired repetitions (PNG vs ctrlgen)")
    parser.add_argument("--json", help="also write the rows as JSON here")
    parser.add_argument("--txt", help="write the table here (default: results/bridge-<date>.txt when --save)")
    parser.add_argument("--save", action="store_true", help="write results/bridge-<date>.txt and .json")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    stamp = datetime.date.today().isoformat()
    if args.save:
        args.txt = args.txt or str(RESULTS / f"bridge-{stamp}.txt")
        args.json = args.json or str(RESULTS / f"bridge-{stamp}.json")

    rows: list[dict] = []
    breakdown: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ctrlgen-bench-bridge-") as work:
        raw_process, raw_port = _start(RAW_SERVER)
        png_process, png_port = _start(PNG_SERVER)
        try:
            with ctrlgen_server(Path(work) / "config") as client:
                for size in sizes:
                    rounds = Rounds(size, client, raw_port, png_port)
                    try:
                        ctrlgen_s, raw_s = paired_medians(rounds.ctrlgen, rounds.raw_tcp, repeat=args.repeat)
                        png_s, ctrlgen_s2 = paired_medians(rounds.png_bridge, rounds.ctrlgen, repeat=args.png_repeat)
                        for _ in range(args.repeat):
                            rounds.ctrlgen(breakdown=True)
                        compute_s = server_compute_seconds(size, rounds.mask, args.repeat)
                    finally:
                        rounds.close()
                    megabytes = (size * size * 5 + size * size * 3) / 2**20
                    rows.append({"size": f"{size}x{size}", "MiB": round(megabytes, 1), "raw_tcp_s": raw_s,
                                 "ctrlgen_s": ctrlgen_s, "png_s": png_s, "ctrlgen/raw": ctrlgen_s / raw_s,
                                 "png/ctrlgen": png_s / ctrlgen_s2})
                    med = {key: sorted(values)[len(values) // 2] for key, values in rounds.timings.items()}
                    breakdown.append({
                        "size": f"{size}x{size}", "client_hash_s": med["hash"], "uploads_s": med["upload"],
                        "preprocess_s": med["preprocess_until_headers"], "server_compute_s": compute_s,
                        "download_s": med["download"],
                        "transport_s": med["upload"] + med["download"],
                        "transport/raw": (med["upload"] + med["download"]) / raw_s})
        finally:
            for process in (raw_process, png_process):
                process.kill()
                process.wait()

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        print(f"Bridge round trip over loopback ({stamp}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; "
              f"paired medians, {args.repeat}/{args.png_repeat} repetitions)")
        report("Round trip: RGBA canvas + grey mask up, RGB result down (seconds; targets: ctrlgen/raw <= 2, "
               "png/ctrlgen >= 20)", rows)
        report("ctrlgen breakdown (medians): uploads_s = both uploads, client hashing included; preprocess_s = "
               "request until the answer's headers (server_compute_s: the same tile_resample in-process); "
               "download_s = reading the result body; transport_s = uploads + download", breakdown)
    text = buffer.getvalue()
    print(text, end="")
    if args.txt:
        Path(args.txt).write_text(text)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"title": "bridge round trip", "date": stamp, "python": sys.version.split()[0],
                       "cpus": os.cpu_count(), "rows": rows, "breakdown": breakdown}, handle, indent=2)
    return rows


if __name__ == "__main__":
    main()
