"""Built-in adapters: plugins that change a diffusers pipeline for one job and restore it after.

One module per adapter; an adapter with helper modules is a package named after it, its plugin
(the ``ctrlgen_adapters`` hook) in the package's ``__init__.py``:

- ``controlnet/`` — ControlNet units: ``modes.py`` (control modes), ``union.py`` (SDXL union
  models), ``inpaint.py`` (control images at the generation size, the inpaint hint).
- ``ip_adapter/`` — IP-Adapter: ``attach.py`` (load into the UNet and take out exactly),
  ``prepare.py`` (per-use weights, embeddings, masks), ``encoder.py`` (CLIP image encoder),
  ``face.py`` (insightface detection and ArcFace for FaceID/InstantID).
- ``instantid/`` — InstantID: ``identitynet.py`` (keypoints, IdentityNet with face tokens).
- ``reference/`` — reference-only: ``hooks.py`` (write/read passes), ``layers.py`` (attention, AdaIN).
- ``lora/`` — LoRA: ``loading.py`` (prompt tags, PEFT adapter bookkeeping).
- ``embeddings.py`` — textual-inversion embeddings.
- ``layerdiffuse/`` — LayerDiffuse transparent layers: ``weights.py`` (modes, files), ``patches.py``
  (SDXL patches), ``sharing.py`` (SD1.5 attention processors), ``decoder.py`` (transparent VAE decoder).

Adapters import ``ctrlgen.core`` (and preprocessors' helpers); never ``host_bridges``.
"""
