"""Hyper-parameter tuning with Optuna around classifier training (and the synthetic-data knobs).

``config`` is plain data (no torch, no optuna): it validates the ``tune:`` section of an experiment config.
``objective`` turns one Optuna trial into a training run; ``run`` holds the strategies (joint, sequential),
the shared-study worker loop, retrain-best and plots; ``cli`` adds ``synthaug tune``.
"""
