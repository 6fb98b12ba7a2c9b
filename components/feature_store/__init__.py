"""The feature-store seam: the suite's Feast definitions and reading the store, shared by the feature stage
(``components/features``: apply, materialise, training sets) and serving (``serving/feature_lookup.py``).

- ``definitions``: the entity, source, feature views (with TTLs) and feature services, as plain data, and the
  Feast objects built from them; ``repo/feature_store.yaml`` is the local repository's configuration.
- ``store``: open a repository (folder, YAML file or ``s3://`` prefix), a feature service's layout, view freshness.
- ``online``: a service's online rows for entity ids, with each view's TTL applied.
- ``feast_env``: ``import_feast``, the one way in to Feast (it undoes the environment Feast's import changes).

No module here imports Feast at import time.
"""
