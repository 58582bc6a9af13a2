"""Twin runtime: one twin per patient; observations in, derived values and events out."""

from medtwin.twins.events import EventBus
from medtwin.twins.ingest import Ingestor, IngestResult
from medtwin.twins.runtime import TwinRuntime

__all__ = ["EventBus", "IngestResult", "Ingestor", "TwinRuntime"]
