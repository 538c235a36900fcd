"""Running an analysis: a checkpoint's tensors through the spectra stage into a `Report`.

pipeline.py           analyze(): read, solve, fit, summarise, one batch at a time
scheduling.py         batches sized to the memory budget, the order they run in, their cost (ranks' shares)
distributed/          the same analysis spread over torchrun ranks (launch, cluster, jobs, liveness, collective)
weight_differences.py ||W_B - W_A|| / ||W_A|| per matrix of two checkpoints (compare --weights)
"""
