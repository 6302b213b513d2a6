"""Data sets, each in its own module, imported directly: IDX/MNIST loading (``mnist``), the embedded digits
(``digits``), 2-D toy densities (``toy2d``), spirals (``spiral``) and Poisson event sequences (``poisson``)."""
