"""Segmentation preprocessors: semantic maps (ADE20K, COCO) and mediapipe selfie segmentation.

Plugins: ``semantic.py`` (the ``seg_*`` preprocessors), ``mediapipe_selfie.py``. Shared:
``networks.py`` (transformers' segmentation models from local folders), ``palettes.py`` (class
names and colours ControlNet seg models were trained on; SAM's maps use them too).
"""
