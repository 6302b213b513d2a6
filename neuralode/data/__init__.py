"""Dataset helpers: IDX parsing and locating/downloading MNIST-style datasets."""
from neuralode.data.idx import IDXError, read_idx
from neuralode.data.mnist import DATASETS, DataError, Split, load_split

__all__ = ["DATASETS", "DataError", "IDXError", "Split", "load_split", "read_idx"]
