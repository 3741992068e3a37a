"""sar2ndvi: optical-like NDVI from Sentinel-1 radar, and landslide maps from it."""

__version__ = "0.1.0"
