"""The sweep stage: hyperparameter sweeps run locally (Optuna) or on Katib."""
