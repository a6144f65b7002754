"""Face preprocessors: InstantID's five keypoints and the mediapipe face mesh.

Plugins: ``keypoints.py`` (``face_keypoints``), ``mediapipe_face.py``. Shared: ``detect.py``
(insightface SCRFD and MediaPipe detection, InstantID's keypoint drawing; the InstantID and
FaceID adapters use it too).
"""
