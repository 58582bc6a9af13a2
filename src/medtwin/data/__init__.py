"""Data layer: codes and units, validation, the store and its quarantine."""
