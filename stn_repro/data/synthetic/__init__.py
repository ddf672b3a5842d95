"""Synthetic stand-ins for the data sets that cannot be fetched here, written in the real on-disk formats and
read by the real loaders: an SVHN format-1 tree of house numbers built from MNIST digits and drawn styles
(:mod:`.svhn`: the tree and its import; :mod:`.house_numbers`: one picture and every range it draws from;
:mod:`.drawing`: glyphs, warps, compositing) and a CUB-200-2011 tree of two-part "birds" (:mod:`.cub`).
Numbers from them are not SVHN or CUB numbers; every table made from them says SYNTHETIC.
"""
