"""How host applications reach ctrlgen: the bridge server, its client, and the host plugins.

- ``server/`` — ``ctrlgen serve``, the HTTP bridge (protocol v1, docs/protocol.md).
- ``client.py`` — the client, standard library only; host plugins copy this one file in.
- ``client_cli.py`` — ``ctrlgen client ...``; ``install_cli.py`` — ``ctrlgen install/uninstall HOST``.
- ``krita/`` — the Krita plugin (``ctrlgen_krita/``, runs inside Krita) and its installer.

The CLI modules are plugins (the ``ctrlgen_cli_commands`` hook); host installers are
``HostBridgeSpec`` plugins. ``client.py`` imports nothing of ctrlgen.
"""
