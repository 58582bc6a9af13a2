"""Sub-commands of the ``medtwin`` command line, one Typer app per group (``medtwin audit ...``)."""
