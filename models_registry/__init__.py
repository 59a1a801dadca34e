"""The model registry: versioned, signed, immutable model artifacts."""
