"""medtwin: live, personal digital twins of patients.

Layers (imports point down): ``apps -> twins, sims -> models, data, devices -> core``.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
