"""The KServe InferenceService seam that deploy and rollout share: the manifest a version is served with
(``spec``), the writes that move traffic (``patches``), reading KServe's status (``status``), and applying a
write then waiting for the split it asks for (``traffic``)."""
