"""The feature-store stage: Feast definitions over the ingested snapshots, materialisation, training sets."""
