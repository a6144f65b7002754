"""ctrlgen's core: everything that is not a built-in plugin, in four floors.

- :mod:`~ctrlgen.core.plugins` (ground floor) — hooks, the plugin manager, registries, spec types.
- :mod:`~ctrlgen.core.models` — model files: the store, folder layouts, identification from
  headers, loading, offline configs, the CLIP tokenizer, annotator weights, the device.
- :mod:`~ctrlgen.core.engine` — jobs (validated here), the engine, tasks, prompts, samplers,
  masks, memory, previews, the built-in architectures, running a preprocessor.
- :mod:`~ctrlgen.core.cli` (top floor) — the ``ctrlgen`` command, the demo, contact sheets.

``config.py`` (settings), ``errors.py`` (exceptions) and ``images.py`` (image/mask
normalisation and resize helpers) are the shared ground every floor and plugin uses.

Imports go one way, ``plugins`` ← ``models`` ← ``engine`` ← ``cli``, and nothing in ``core``
imports a built-in plugin (``adapters``, ``preprocessors``, ``host_bridges``): built-ins are
named only as strings in :data:`ctrlgen.core.plugins.manager.DEFAULT_PLUGINS` and reached through
hooks and registries. ``tests/test_layering.py`` keeps this true.
"""
