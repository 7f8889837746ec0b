"""The one exception of the export package."""


class ExportError(ValueError):
    """A checkpoint cannot be converted faithfully (a value the target format cannot express, a layout
    this code does not know, tensors that do not match the config). Raised instead of approximating."""
