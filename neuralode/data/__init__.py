"""Data sets: IDX/MNIST loading (``neuralode.data.mnist``) and 2-D toy densities (``neuralode.data.toy2d``)."""
