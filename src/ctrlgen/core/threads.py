"""How many CPU threads torch and OpenCV use: the ``threads`` setting.

``ctrlgen --threads N`` (every subcommand, ``serve`` included), ``CTRLGEN_THREADS`` or
``threads = N`` in ``config.toml``; unset, each library keeps its own default (usually one
thread per core). On a small or shared CPU fewer threads are often faster: measured on two
busy cores, torch on two threads ran at 0.75× the speed of one.

The count is set through the variables the libraries read when they load
(``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``,
``OPENCV_FOR_THREADS_NUM``), so nothing heavy is imported to set it, and on torch and OpenCV
directly when they are loaded already. :meth:`ctrlgen.core.engine.engine.Engine.run` sets it
again in the thread that runs the job (OpenMP keeps one count per thread).
"""

from __future__ import annotations

import os
import sys

from ctrlgen.core.errors import CtrlgenError

ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENCV_FOR_THREADS_NUM")
MAX_THREADS = 1024


def parse_threads(value: object, where: str) -> int | None:
    """A thread count from a setting (None, "" or 0: the libraries' default); errors name ``where``."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        count = int(str(value).strip()) if not isinstance(value, bool) else -1
    except ValueError:
        count = -1
    if count == 0:
        return None
    if not 1 <= count <= MAX_THREADS:
        raise CtrlgenError(f"{where} = {value!r} is not a thread count; give a whole number from 1 to "
                           f"{MAX_THREADS} (or 0 for the libraries' default)")
    return count


def apply_threads(count: int | None) -> None:
    """Make torch and OpenCV use ``count`` CPU threads from now on (None: leave them be)."""
    if not count:
        return
    for name in ENV_VARS:
        os.environ[name] = str(count)
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "set_num_threads") and torch.get_num_threads() != count:
        torch.set_num_threads(count)
    cv2 = sys.modules.get("cv2")
    if cv2 is not None and hasattr(cv2, "setNumThreads"):
        cv2.setNumThreads(count)
