"""What runs an exported file: `ExportedModel` over one runtime module per format
(`deploy.formats` names which), each imported only when a file of its format is opened."""
from .base import Backend, ExportedModel, fill_rows, run_batches

__all__ = ["Backend", "ExportedModel", "fill_rows", "run_batches"]
