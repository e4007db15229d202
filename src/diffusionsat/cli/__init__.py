"""The ``diffusionsat`` command line."""
