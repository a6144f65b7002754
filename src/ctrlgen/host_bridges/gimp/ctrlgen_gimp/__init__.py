"""ctrlgen for GIMP 3: procedures under Filters > ctrlgen that send the active drawable and
the selection to a running ``ctrlgen serve`` and bring the results back as layers.

- ``logic.py``: everything that needs no GIMP (regions, masks, jobs, capabilities, messages);
- ``gimpio.py``: pixels in and out of GIMP (GEGL buffers, layers, undo, parasites, progress);
- ``dialogs.py``: the GimpUi.ProcedureDialog dialogs, widgets from the server's capabilities;
- ``plugin.py``: the Gimp.PlugIn and its procedures; ``watchdog.py``: cancels the server's job
  when GIMP stops the plug-in (the progress bar's Cancel ends the plug-in process).

Runs in GIMP's own Python with the standard library and PyGObject only; imports nothing of
ctrlgen (the bridge client is the copy beside it, see ``client_import.py``).
"""
