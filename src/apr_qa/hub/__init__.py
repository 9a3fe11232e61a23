"""Hub access: downloading a model revision (huggingface_hub, pinned, SHA-256 verified), the model cache
that keeps, leases and evicts revisions, and a local HuggingFace-compatible mirror for offline runs."""
