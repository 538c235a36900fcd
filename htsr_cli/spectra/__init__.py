"""The numerical core: a weight tensor's matrices, their eigenvalues and the fits on them.

matrices.py  how a tensor becomes the matrices whose spectra are fitted (conv slices, scaling)
solver.py    Gram matrices and eigenvalues, batched, on a device, at a precision: the only
             module that knows about devices and precision (SolverPrecision decides the dtypes)
fit.py       power-law fits of a 1-D spectrum (xmin by KS, peak, median, grid)
farms.py     FARMS: the same fit on the pooled spectra of sub-matrix windows
metrics.py   norms, stable rank, entropy: pure functions of one spectrum
memory.py    how many bytes the machine can give a batch
"""
