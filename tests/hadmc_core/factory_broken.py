"""A factory module that fails while it is imported (``hadmc compress`` reports the error)."""

raise RuntimeError("this module needs the camera driver")
