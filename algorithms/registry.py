"""Every algorithm the provider offers; add new ones here."""
from .extract import ExtractFeatures
from .fitpoints import FitPoints
from .maps import ClusterMap, PcaMap
from .predictmap import PredictMap

ALGORITHMS = [ExtractFeatures, ClusterMap, PcaMap, FitPoints, PredictMap]
