"""CUB-200-2011 (spec Sect. 6): the official archive, its index files, a torchvision-based dataset with the
paper's crops, a resumable (and shardable) batch stream, and (apart, in :mod:`stn_repro.data.synthetic`) a synthetic stand-in in CUB's exact format.

- Source: ``CUB_200_2011.tgz`` from Caltech DATA (:data:`CUB_URLS`), or the folder it extracts to. It holds
  ``CUB_200_2011/`` with ``images/<class folder>/<name>.jpg`` and the index files ``images.txt``,
  ``image_class_labels.txt``, ``train_test_split.txt``, ``classes.txt``, ``bounding_boxes.txt`` (and
  ``parts/``, ``attributes/``, which the suite does not read). :func:`prepare_cub` (``make data-cub``)
  puts a checked copy in ``<data_dir>/CUB_200_2011/``.
- :func:`read_cub_index` reads and checks the index files (:class:`CubIndex`); :class:`CubDataset` decodes
  and crops one image (the spec's recipe, :class:`CubCrops`); :class:`CubStream` is the training loop's
  batch stream over a ``DataLoader`` (workers, pinned memory), sharded with a ``DistributedSampler``;
  :func:`eval_loader` is the test-set loader.
- :mod:`stn_repro.data.synthetic.cub` writes a tree in CUB's exact layout and file formats with synthetic
  "birds": test fixtures and the synthetic stand-in (``make data-cub-synthetic``), read by the same code
  as the real data. Its numbers are not CUB numbers; everything built from it says synthetic.

Modules: :mod:`.index` (the index files), :mod:`.prepare` (archive, folder or download), :mod:`.dataset`.

**Convention**: images leave the dataset as ``[3, S, S]`` RGB, uint8 or float in ``[0, 1]``: *no* mean/std
normalisation here. The models normalise after their spatial transformers have sampled the image (spec
Sect. 1, pitfall: zero padding must stay "black"). Labels are 0-based (``classes.txt`` ids minus 1). Image ids
are CUB's, 1-based. Boxes are ``(x, y, width, height)`` in pixels of the original image, as CUB stores them.
"""
