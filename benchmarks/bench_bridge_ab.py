"""Bridge round trip, A/B: two ``ctrlgen serve`` processes at once — this tree as it is and a
variant of it — and the raw TCP server with the same work (``raw_compute``), timed in turns
(A, B, raw; each round trip as ``bench_bridge.py``'s ``ctrlgen`` row: one bundle up, the RGB
result down). For a server change on a loaded machine, where separate runs scatter more than
the change.

Variants (``--variant``):

- ``unsliced``: raw image answers written to the transport in one piece (as before
  ``images.SlicedResponse``), so asyncio copies what the socket does not take at once.

    python benchmarks/bench_bridge_ab.py [--sizes 1024,2048,4096] [--repeat N] [--json F]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import bench_bridge  # noqa: E402
from _timing import command_line, report  # noqa: E402

VARIANTS = {
    "unsliced": "from ctrlgen.host_bridges.server import images; images.SlicedResponse.SLICE = 1 << 62",
}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1024,2048,4096")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--variant", default="unsliced", choices=sorted(VARIANTS))
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    code = VARIANTS[args.variant] + "; import sys; from ctrlgen.core.cli.main import main; main(sys.argv[1:])"
    rows = []
    with tempfile.TemporaryDirectory(prefix="ctrlgen-bench-ab-") as work, contextlib.ExitStack() as stack:
        raw_process, raw_port = bench_bridge._start(bench_bridge.RAW_SERVER, env=dict(os.environ, OMP_NUM_THREADS="1"))
        try:
            tree = stack.enter_context(bench_bridge.ctrlgen_server(Path(work) / "a"))
            bench_bridge.SERVE = ["-c", code]
            variant = stack.enter_context(bench_bridge.ctrlgen_server(Path(work) / "b"))
            for size in (int(s) for s in args.sizes.split(",")):
                a = bench_bridge.Rounds(size, tree, raw_port, raw_port)
                b = bench_bridge.Rounds(size, variant, raw_port, raw_port)
                times: dict[str, list[float]] = {"tree": [], "variant": [], "raw": []}
                for index in range(args.repeat + 1):  # the first round of each warms up
                    order = [("tree", a.ctrlgen), ("variant", b.ctrlgen), ("raw", a.raw_compute)]
                    for name, function in order if index % 2 else order[::-1]:
                        started = time.perf_counter()
                        function()
                        if index:
                            times[name].append(time.perf_counter() - started)
                a.close()
                b.close()
                tree_s, variant_s, raw_s = (statistics.median(times[k]) for k in ("tree", "variant", "raw"))
                rows.append({"size": f"{size}x{size}", "tree_s": tree_s, f"{args.variant}_s": variant_s,
                             "raw_compute_s": raw_s, "tree/raw_compute": tree_s / raw_s,
                             f"{args.variant}/raw_compute": variant_s / raw_s, f"tree/{args.variant}": tree_s / variant_s})
                print(rows[-1], flush=True)
        finally:
            raw_process.kill()
            raw_process.wait()
    report(f"Bridge round trip A/B: this tree vs the {args.variant!r} variant, against raw TCP doing the same work "
           "(median seconds)", rows)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "command": command_line(), "cpus": os.cpu_count(),
                                               "python": sys.version.split()[0]}, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
