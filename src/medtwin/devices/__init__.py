"""Device layer: adapters from the physical side and signal conditioning."""
