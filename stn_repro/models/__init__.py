"""The networks of each experiment, built from explicit options: distorted MNIST's FCN/CNN and their ST
versions under a parameter budget (:mod:`.mnist`), SVHN's multi-digit CNN and ST-CNN Single/Multi
(:mod:`.svhn`), CUB's backbone and parallel attention transformers (:mod:`.cub`), MNIST addition's
(:mod:`.addition`), co-localisation's attention and embedding (:mod:`.coloc`), and a convolution
whose gradients run faster on a CPU (:mod:`.cpu_conv`). They use :mod:`stn_repro.transformers`;
they know nothing of training.
"""
