"""Co-localisation (Appendix A.2, Table 5): one digit class's 100 images, an attention transformer, no labels.

- :mod:`.embedding`: e(), the CNN whose activations compare two views (trained once per profile, shared);
- :mod:`.learner`: the hinge loss on pairs of views and :class:`~.learner.ColocLearner`, which trains the
  transformer with e() frozen;
- :mod:`.task`: one run of one digit class (:func:`~.task.run_coloc_seed`), scored as the % of images whose
  predicted box has IoU > 0.5 with the true box;
- :mod:`.pictures`: the found boxes drawn, and their history over a run.
"""
