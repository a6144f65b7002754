"""The ``ctrlgen`` command (the top floor: may import all of ``core`` and ``ctrlgen.testing``'s tiny
model writers for the demo; nothing in ``core`` imports it).

- ``main.py`` — the parser and the core commands (plugins, models, preprocess, generate, demo,
  config-dir). Plugins add theirs through the ``ctrlgen_cli_commands`` hook: serve, client,
  install/uninstall (``host_bridges``) and render-pose (the pose preprocessors) come that way.
- ``demo.py`` — ``ctrlgen demo``: a tiny random-weight model through the real store and engine.
- ``sheet.py`` — labelled contact sheets; ``progress.py`` — the terminal progress bar.
"""
