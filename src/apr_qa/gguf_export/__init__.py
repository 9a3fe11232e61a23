"""Export .apr models as GGUF files llama.cpp loads (`apr-qa export-gguf`)."""

from .export import ExportResult, export_gguf

__all__ = ["ExportResult", "export_gguf"]
