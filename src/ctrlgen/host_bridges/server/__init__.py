"""``ctrlgen serve``: the HTTP bridge host apps talk to (FastAPI on uvicorn, docs/protocol.md).

- ``app.py`` — the app and every ``/v1/`` HTTP route (capabilities, uploads, jobs, events,
  results, preprocess, health), server configuration and start-up.
- ``models.py`` — request bodies (they also make the OpenAPI document).
- ``jobs.py`` — the job queue and its worker thread, events and results.
- ``uploads.py`` — content-addressed uploads held in memory, bounded.
- ``images.py`` — image bodies in (raw, PNG, WebP) and out.
- ``security.py`` — the token file and the Host/Origin/token checks on every request.
- ``cli.py`` — the ``serve`` command's arguments (a ``ctrlgen_cli_commands`` plugin).
"""
