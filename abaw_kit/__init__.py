"""abaw-kit: the ABAW EXPR challenge toolkit."""
__version__ = "0.1.0"
