"""Bridge round trip: a canvas + mask up and a result down over loopback, four ways.

For each size (1024², 2048², 4096²), one round trip sends an RGBA canvas and a grey mask and
gets an RGB image of the same size back:

- ctrlgen: a real ``ctrlgen serve`` (own process) and the standard-library client. Both
  images carry new bytes every round (a changed pixel), so they are hashed and sent; the result
  comes from ``POST /v1/preprocess`` with ``tile_resample`` at rate 1 on the mask, which returns
  it as RGB at its size: the cheapest real server route that answers a full-size image (a job
  cannot produce a 4096² result in reasonable time on the tiny CPU model). The client sends one
  request, a bundle (the preprocess request, the mask it names and the canvas); ``ctrlgen_v1``
  is the same round trip the way clients did before bundles: HEAD and PUT per image (on two
  threads), then the JSON request.
- raw TCP: a socket server (own process) that receives the same byte counts and sends the
  result's byte count back, on one kept-open connection — the limit of loopback.
  ``raw_compute``: the same server, also running the same ``tile_resample`` on the mask it
  received before answering with its bytes: the limit of loopback for this round trip, with
  the server's work in it. The goal is ``ctrlgen/raw_compute`` <= 2.
- PNG bridge: what other plugins do. The client encodes canvas and mask as PNG, base64s them
  into JSON and POSTs to a minimal ``http.server`` (own process), which decodes both and
  answers the RGB result as a base64 PNG in JSON, decoded again by the client.

The sides are timed alternately (``_timing.paired_medians``). A breakdown row splits the
ctrlgen round trip: the client's hashing, the request until the answer's headers (sending,
the server's hashing and storing, the compute), the download; ``transport_s`` is the round trip
without the server's compute (measured in-process), against raw TCP.

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
from _server import served  # noqa: E402
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
    header = bytearray(32)
    while fill(conn, memoryview(header)):
        up_a, up_b, down, side = struct.unpack("<QQQQ", header)
        inbox = buffers.setdefault(("in", up_a + up_b), bytearray(up_a + up_b))
        if not fill(conn, memoryview(inbox)):
            break
        if side:  # the same work as the ctrlgen server's: tile_resample of the mask (the second body)
            import numpy as np
            from ctrlgen.core.engine.preprocess import preprocess
            mask = np.frombuffer(inbox, np.uint8, count=up_b, offset=up_a).reshape(side, side)
            conn.sendall(memoryview(preprocess("tile_resample", mask, down_sampling_rate=1.0).image).cast("B"))
        else:
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
    arguments = ["serve", "--port", "0", "--max-upload-memory", "4G", "--max-upload-bytes", "512M"]
    with served(config, arguments, {"OMP_NUM_THREADS": "1"}, start_timeout=120) as client:
        yield client


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
        self.timings: dict[str, list[float]] = {"hash": [], "request_until_headers": [], "download": [],
                                                "round_trip": []}

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
        """One bundle: the preprocess request with the mask, and the canvas."""
        from ctrlgen.host_bridges.client import RawImage

        self._new_content()
        n = self.size
        request = {"preprocessor": "tile_resample", "image": RawImage(self.mask, n, n, 1), "mask": None,
                   "params": {"down_sampling_rate": 1.0}, "format": "raw"}
        if not breakdown:
            answer = self.client._send_bundle("/v1/preprocess", request, carry=[RawImage(self.canvas, n, n, 4)])
            if answer is None or len(answer[1]) != self.result_bytes:
                raise AssertionError(f"ctrlgen answered {answer and len(answer[1])} bytes, expected "
                                     f"{self.result_bytes}")
            return
        # The same request by hand, to split hashing, the request and the download.
        start = time.perf_counter()
        entries, bodies = [], []
        for pixels, channels in ((self.mask, 1), (self.canvas, 4)):
            digest = hashlib.sha256(pixels).hexdigest()
            entries.append({"id": f"sha256:{digest}", "format": "raw", "width": n, "height": n,
                            "channels": channels, "length": len(pixels)})
            bodies.append(pixels)
        request["image"] = entries[0]["id"]
        header = json.dumps({"request": request, "images": entries}).encode()
        parts = [len(header).to_bytes(4, "little") + header, *bodies]
        hashed = time.perf_counter()
        conn = self.client._thread_connection()[0]
        conn.request("POST", "/v1/preprocess/bundle", body=parts, headers=self.client._headers(
            {"Content-Type": "application/vnd.ctrlgen.bundle", "Content-Length": str(sum(map(len, parts)))}))
        response = conn.getresponse()
        answered = time.perf_counter()
        body = response.read()
        done = time.perf_counter()
        if len(body) != self.result_bytes:
            raise AssertionError(f"ctrlgen returned {len(body)} bytes, expected {self.result_bytes}: {body[:200]}")
        self.timings["hash"].append(hashed - start)
        self.timings["request_until_headers"].append(answered - hashed)
        self.timings["download"].append(done - answered)
        self.timings["round_trip"].append(done - start)

    def ctrlgen_v1(self) -> None:
        """The round trip as clients made it before bundles: HEAD + PUT per image, then the request."""
        from ctrlgen.host_bridges.client import RawImage

        self._new_content()
        n = self.size
        _, mask_ref = self.client.upload_many([RawImage(self.canvas, n, n, 4), RawImage(self.mask, n, n, 1)])
        payload = json.dumps({"preprocessor": "tile_resample", "image": mask_ref,
                              "params": {"down_sampling_rate": 1.0}, "format": "raw"}).encode()
        _, _, data = self.client.request("POST", "/v1/preprocess", payload, {"Content-Type": "application/json"})
        if len(data) != self.result_bytes:
            raise AssertionError(f"ctrlgen returned {len(data)} bytes, expected {self.result_bytes}")

    def raw_tcp(self, compute: bool = False) -> None:
        self._new_content()
        self.raw.sendall(struct.pack("<QQQQ", len(self.canvas), len(self.mask), self.result_bytes,
                                     self.size if compute else 0))
        self.raw.sendall(self.canvas)
        self.raw.sendall(self.mask)
        view, got = memoryview(self.raw_result), 0
        while got < self.result_bytes:
            count = self.raw.recv_into(view[got:])
            if not count:
                raise ConnectionError("raw TCP server closed the connection")
            got += count

    def raw_compute(self) -> None:
        self.raw_tcp(compute=True)

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
    parser.add_argument("--repeat", type=int, default=5, help="paired repetitions (ctrlgen vs raw TCP, ...)")
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
        raw_process, raw_port = _start(RAW_SERVER, env=dict(os.environ, OMP_NUM_THREADS="1"))
        png_process, png_port = _start(PNG_SERVER)
        try:
            with ctrlgen_server(Path(work) / "config") as client:
                for size in sizes:
                    rounds = Rounds(size, client, raw_port, png_port)
                    try:
                        ctrlgen_s, raw_s = paired_medians(rounds.ctrlgen, rounds.raw_tcp, repeat=args.repeat)
                        ctrlgen_c, raw_compute_s = paired_medians(rounds.ctrlgen, rounds.raw_compute,
                                                                  repeat=args.repeat)
                        v1_s, ctrlgen_v = paired_medians(rounds.ctrlgen_v1, rounds.ctrlgen, repeat=args.repeat)
                        png_s, ctrlgen_s2 = paired_medians(rounds.png_bridge, rounds.ctrlgen, repeat=args.png_repeat)
                        for _ in range(args.repeat):
                            rounds.ctrlgen(breakdown=True)
                        compute_s = server_compute_seconds(size, rounds.mask, args.repeat)
                    finally:
                        rounds.close()
                    megabytes = (size * size * 5 + size * size * 3) / 2**20
                    rows.append({"size": f"{size}x{size}", "MiB": round(megabytes, 1), "raw_tcp_s": raw_s,
                                 "raw_compute_s": raw_compute_s, "ctrlgen_s": ctrlgen_c, "ctrlgen_v1_s": v1_s,
                                 "png_s": png_s,
                                 "ctrlgen/raw_compute": ctrlgen_c / raw_compute_s, "ctrlgen/raw": ctrlgen_s / raw_s,
                                 "ctrlgen_v1/ctrlgen": v1_s / ctrlgen_v, "png/ctrlgen": png_s / ctrlgen_s2})
                    med = {key: sorted(values)[len(values) // 2] for key, values in rounds.timings.items()}
                    transport = med["round_trip"] - compute_s
                    breakdown.append({
                        "size": f"{size}x{size}", "client_hash_s": med["hash"],
                        "request_until_headers_s": med["request_until_headers"], "server_compute_s": compute_s,
                        "download_s": med["download"], "transport_s": transport, "transport/raw": transport / raw_s})
        finally:
            for process in (raw_process, png_process):
                process.kill()
                process.wait()

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        print(f"Bridge round trip over loopback ({stamp}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; "
              f"paired medians, {args.repeat}/{args.png_repeat} repetitions)")
        report("Round trip: RGBA canvas + grey mask up, RGB result down (seconds; targets: ctrlgen/raw_compute "
               "<= 2, png/ctrlgen >= 20)", rows)
        report("ctrlgen breakdown (medians): client_hash_s = hashing both images; request_until_headers_s = "
               "sending the bundle until the answer's headers (the server's hashing, storing and compute; "
               "server_compute_s: the same tile_resample in-process); download_s = reading the result body; "
               "transport_s = the round trip without server_compute_s", breakdown)
    text = buffer.getvalue()
    print(text, end="")
    if args.txt:
        Path(args.txt).write_text(text)
    if args.json:
        with open(args.json, "w") as handle:
            command = "python benchmarks/bench_bridge.py " + " ".join(argv if argv is not None else sys.argv[1:])
            json.dump({"title": "bridge round trip", "date": stamp, "command": command.strip(),
                       "python": sys.version.split()[0], "cpus": os.cpu_count(), "rows": rows,
                       "breakdown": breakdown}, handle, indent=2)
    return rows


if __name__ == "__main__":
    main()
