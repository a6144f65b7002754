"""Pose preprocessors: OpenPose (body, hands, face), DWPose and an offline mediapipe pose.

Plugins: ``openpose.py`` (also the ``ctrlgen render-pose`` command), ``dwpose.py``,
``mediapipe_pose.py``, ``hands.py`` (``hand_openpose``/``hand_depth``: one hand's skeleton or
depth-like map from its 21 landmarks, and the template hand, for the fix pass). Shared: ``openpose_json.py`` (people → OpenPose JSON → the standard
drawing, so an edited JSON redraws the same map), ``dwpose_onnx.py`` (YOLOX + RTMPose on
onnxruntime), ``mediapipe_landmarks.py`` (mediapipe's landmarks as OpenPose points).
"""
