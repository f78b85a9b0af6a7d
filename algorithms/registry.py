"""Every algorithm the provider offers; add new ones here."""
from .extract import ExtractFeatures
from .maps import ClusterMap, PcaMap

ALGORITHMS = [ExtractFeatures, ClusterMap, PcaMap]
