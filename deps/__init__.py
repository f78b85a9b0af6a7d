"""SoilSSL's dependency manager (the QGIS side; ``core/`` never imports it).

QGIS's Python rarely has torch, timm, rasterio and scikit-learn, and on Debian 12 / Ubuntu 24.04
``pip install --user`` is refused ("externally-managed-environment", PEP 668).  SoilSSL keeps
them in a folder of its own inside the QGIS profile: a virtual environment of the Python that
QGIS runs, made with ``--system-site-packages`` (so QGIS's own numpy, GDAL and PyQt stay the
ones used), which PEP 668 allows.

- ``paths``        where that folder is; ``activate()`` puts it on ``sys.path`` at plugin start.
- ``torch_build``  CPU or CUDA build of torch from ``nvidia-smi`` (a pure function).
- ``installer``    the Python to run, the pip commands, pip's progress, the atomic finish.
- ``diagnostics``  versions, torch build, CUDA device and paths, as text.
- ``dialogs``      the Install dependencies and Diagnostics dialogs (Qt).
"""
