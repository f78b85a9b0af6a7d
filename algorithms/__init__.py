"""The SoilSSL Processing algorithms (imported only inside QGIS).

Importing them keeps triton out of the process first (see ``nativeguard.py``): the
algorithms import ``soilssl.core`` (torch, timm) lazily, always after this.
"""
from ..nativeguard import keep_out

keep_out()
