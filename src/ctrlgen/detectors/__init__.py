"""Detectors: image in, the faces, hands and people in it out (boxes, masks, keypoints).

Each module is a plugin with a ``ctrlgen_detectors`` hook yielding
:class:`~ctrlgen.core.plugins.specs.DetectorSpec` s; the engine runs them through
``ctrlgen.detect`` (``core/engine/detect.py``), and the face/hand fix pass chooses what to
repaint from their :class:`~ctrlgen.core.plugins.specs.Detection` s.

- ``mediapipe_face.py``: MediaPipe face detection (short and full range) and face mesh
  (mask = the face oval), ``mediapipe_hands.py`` (box, hull mask, 21 3-D landmarks,
  handedness), ``mediapipe_person.py`` (selfie segmentation: one detection per person
  blob) — all with the weights mediapipe 0.10.21 bundles, offline.
- ``scrfd.py``: insightface SCRFD (antelopev2 / buffalo_l) from the model store.
- ``yolo.py``: YOLOv8 detection/segmentation models exported to ONNX (ADetailer's
  ``face_yolov8n`` & co.), run with onnxruntime; letterbox, NMS, masks from prototypes.
- ``sam.py``: any detector's boxes refined into masks by Segment Anything.
- ``shapes.py``: masks from points and boxes from masks; ``draw.py``: detections drawn on
  an image; ``cli.py``: ``ctrlgen detect``.
"""
