"""The deploy stage: a blessed model version served by a KServe InferenceService, and its canary traffic."""
