"""Training on Ray Train: plans of stages (one file each under :mod:`emoray.train.stages`),
the record split, the fit, metrics, evaluation over seeds and subject folds.

Importing this package imports nothing heavy; import the module you need
(:mod:`emoray.train.plan` to run a plan, :mod:`emoray.train.stages` for the registry).
"""
