"""apr-qa: convert HuggingFace models to the native .apr format and certify them."""

__version__ = "0.1.0"
