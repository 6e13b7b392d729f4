"""Trained parts of kgclip (stage 1: an adapter on frozen towers).

Modules, one job each: :mod:`.captions` (caption datasets and their splits), :mod:`.towers` (the frozen
base towers: features and zero-shot vectors), :mod:`.features` (the feature cache), :mod:`.heads` (the
torch heads), :mod:`.gate` (mixing the adapter's score with the zero-shot one), :mod:`.train` (the
training loop), :mod:`.modelfile` (safetensors model files with a card), :mod:`.model` (a loaded adapter),
:mod:`.adapter` (``train_adapter``: dataset in, model file out), :mod:`.encoder` (the ``adapter:PATH``
model spec). Importing this package imports neither torch nor a model.
"""
