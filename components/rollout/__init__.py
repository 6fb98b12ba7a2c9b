"""The rollout stage: a progressive canary judged step by step from the predictors' metrics."""
