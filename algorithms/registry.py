"""Every algorithm the provider offers; add new ones here."""
from .download import DownloadBackbone
from .extract import ExtractFeatures
from .fitpoints import FitPoints
from .maps import ClusterMap, PcaMap
from .predictmap import PredictMap
from .pretrain import Pretrain
from .sampling import SamplingDesign
from .similarity import SimilarityMap
from .tools import ClearCache

ALGORITHMS = [ExtractFeatures, ClusterMap, PcaMap, Pretrain, FitPoints, PredictMap,
              DownloadBackbone, ClearCache, SimilarityMap, SamplingDesign]
