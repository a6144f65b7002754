"""Line and edge preprocessors: lineart, softedge (HED, PiDiNet), scribble, M-LSD / OpenCV LSD.

Plugins: ``lineart.py``, ``softedge.py``, ``scribble.py``, ``mlsd.py``. Shared: ``common.py``
(detector sizing, network loading from the store, ``safe_step``/``nms``), ``manga.py`` (the
anime-denoise network), ``softedge_networks.py`` (HED and PiDiNet on our weights).
"""
