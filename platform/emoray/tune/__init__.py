"""Hyperparameter-search campaigns on Ray Tune + Optuna over a training plan's fields.

:mod:`emoray.tune.space` maps dotted plan fields to Tune distributions and checks them,
:mod:`emoray.tune.campaign` runs, resumes and promotes campaigns, :mod:`emoray.tune.report`
turns a campaign's trials into a table and plots.
"""
