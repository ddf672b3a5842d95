"""One module (or package) per experiment of the paper: a config's explicit spec of one seed -> the data
loaded, the model built, a :class:`~stn_repro.training.runs.PreparedRun`, trained by
:func:`~stn_repro.training.runs.run_seed`; and how to rebuild a trained model from its ``model.pt``.

Distorted MNIST (:mod:`.mnist`, Table 1), SVHN (:mod:`.svhn`, Table 2), CUB-200-2011 (:mod:`.cub`, Table 3),
MNIST addition (:mod:`.addition`, Table 4), co-localisation (:mod:`.coloc`, Table 5). No task imports another.
"""
