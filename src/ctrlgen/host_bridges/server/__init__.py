"""``ctrlgen serve``: the HTTP bridge host apps talk to (FastAPI on uvicorn, docs/protocol.md).

- ``app.py`` — the app and the ``/v1/`` HTTP routes (capabilities, jobs, events, results and
  their crops, preprocess, health) and the server configuration.
- ``image_routes.py`` — ``HEAD``/``PUT /v1/images`` and bundles (a request with its images).
- ``bodies.py`` — image and bundle bodies received straight into their buffers, hashed as they
  arrive.
- ``runtime.py`` — warming up after start (imports, ``--preload``) and stopping cleanly.
- ``serving.py`` — ``ctrlgen serve``: sockets, ``server.json``, uvicorn, signals.
- ``models.py`` — request bodies (they also make the OpenAPI document).
- ``jobs.py`` — the job queue and its worker thread, events and results; rebuilt from the
  journal after a restart.
- ``journal.py`` — the job journal (SQLite, WAL): what was acknowledged survives ``kill -9``.
- ``files.py`` — uploads and results as files by hash (written atomically), the outputs folder.
- ``uploads.py`` — content-addressed uploads: in memory within a byte budget, spilled to disk.
- ``images.py`` — image bodies in (raw, PNG, WebP) and out.
- ``http.py`` — the connection layer: JSON answers for what is not HTTP, stalled clients cut off.
- ``security.py`` — the token file and the Host/Origin/token checks on every request.
- ``cli.py`` — the ``serve`` command's arguments (a ``ctrlgen_cli_commands`` plugin).
"""
