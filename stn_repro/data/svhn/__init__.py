"""SVHN multi-digit data (spec Sect. 5): the official format-1 files, the Goodfellow et al. (2013) crops,
stored checksummed sets and the training stream.

- Source: SVHN "format 1" (full numbers): ``train/``, ``test/``, ``extra/`` folders of PNGs, each with a
  ``digitStruct.mat`` (MATLAB v7.3, i.e. HDF5) that lists every image's digit boxes and labels. The
  folders, or the archives ``train.tar.gz``, ``test.tar.gz``, ``extra.tar.gz`` from
  http://ufldl.stanford.edu/housenumbers/, are imported by :func:`import_svhn` (``make data-svhn``).
- Stored sets: ``<data_dir>/svhn_sets/<name>_<size>px_<split>.h5`` with ``images`` uint8 ``[N, 3, S, S]``,
  ``labels`` int64 ``[N, 5]`` (digits 0-9, :data:`NO_DIGIT` after the last digit), ``length`` int64 ``[N]``
  and ``names`` (the source PNG names, fixed-length bytes); :func:`load_svhn_set` verifies version and
  checksum. Split ``val`` is :data:`NUM_VALIDATION` images of the official ``train`` split (a fixed seeded
  choice), removed from ``train``.
- Training: :class:`SvhnStream` (seeded epoch order and random 54 x 54 crops, exact resume) and
  :func:`center_crop` for the evaluation sets.
- Synthetic stand-in (SVHN itself cannot be fetched everywhere): :mod:`stn_repro.data.synthetic.svhn`
  writes a format-1 tree of house-number-like images built from MNIST digits, which the same importer
  turns into ``synthetic-svhn_*`` sets (``make data-svhn-synthetic``). Numbers from it are not SVHN numbers.

Modules: :mod:`.digit_struct` (the MATLAB file, read and written), :mod:`.crops`, :mod:`.stored` (the stored
sets), :mod:`.importer` (import and download), :mod:`.stream`.

**Convention**: boxes are ``(left, top, width, height)`` in pixels of the source image, as SVHN stores
them; pixel ``(i, j)`` (row, column) covers ``[j, j + 1) x [i, i + 1)``, so a box covers the columns
``left .. left + width - 1`` (0-based, as the common Python readers take them: the SVHN documentation
does not say; a 1-based reading would move every crop by one source pixel). Images in tensors are ``[N, 3, S, S]`` uint8, RGB, 0 = black. SVHN's raw
label 10 is the digit 0; stored labels are the digits themselves (0-9) and :data:`NO_DIGIT` (10) for an
empty position. Every seeded choice derives its seed from one base seed with
:func:`~stn_repro.seeding.derive_seed`.
"""
