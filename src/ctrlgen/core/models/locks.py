"""The one lock every model load in a process takes.

diffusers, transformers and accelerate build empty models by patching torch globally while they
load (``init_empty_weights``, the ``meta`` device); two loads interleaving on two threads can
leave that patch in place, and every tensor made afterwards lands on ``meta``. Several engines
run in one process (``ctrlgen batch --devices cpu,cpu``, ``ctrlgen serve --devices ...``) and
preprocessors load their networks on the job's thread, so the engine's loads
(:mod:`ctrlgen.core.engine.engine`) and the preprocessors' (:func:`.annotators.loaded`) are
serialised by this re-entrant lock. Take it before any other lock, never after.
"""

from __future__ import annotations

import threading

LOAD_LOCK = threading.RLock()
