"""Built-in preprocessors: image in, control map out, each a plugin (the ``ctrlgen_preprocessors`` hook).

One module per preprocessor; a family with helper modules is a package named after it:

- ``depth/`` — MiDaS, ZoeDepth, LeReS, Depth Anything V2 (``networks.py``, ``depth_anything.py``);
  ``normal.py`` (BAE normals) uses its networks.
- ``pose/`` — ``openpose.py``, ``dwpose.py``, ``mediapipe_pose.py`` and what they share:
  ``openpose_json.py`` (OpenPose JSON and its drawing), ``dwpose_onnx.py``, ``mediapipe_landmarks.py``.
- ``lines/`` — ``lineart.py``, ``softedge.py``, ``scribble.py``, ``mlsd.py``; ``common.py``,
  ``manga.py`` (the anime-denoise network), ``softedge_networks.py`` (HED, PiDiNet).
- ``segmentation/`` — ``semantic.py`` (ADE20K/COCO), ``mediapipe_selfie.py``; ``networks.py``, ``palettes.py``.
- ``face/`` — ``keypoints.py`` (InstantID's five points), ``mediapipe_face.py``; ``detect.py`` (SCRFD, MediaPipe).
- ``sam/`` — Segment Anything (``model.py``: checkpoints and prompts).
- ``canny.py``, ``normal.py``, ``shuffle.py``, ``tile.py``, ``inpaint.py`` — single-module plugins.

Preprocessors import ``ctrlgen.core`` only (never ``adapters`` or ``host_bridges``).
"""
