"""soilssl:clustermap and soilssl:pcamap: unsupervised maps of a feature raster."""
from qgis.core import (QgsProcessingParameterRasterDestination,
                       QgsProcessingParameterRasterLayer)

from .base import SoilSSLAlgorithm
from .styles import first_classes, style_output


class _FeatureMap(SoilSSLAlgorithm):
    GROUP = "features"
    STYLE = ""

    def define(self):
        self.add(QgsProcessingParameterRasterLayer("INPUT", "Feature raster"))
        self.init_extra()
        self.add_number("SEED", "Random seed", 0, is_advanced=True)
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", self.OUTPUT_LABEL))

    def init_extra(self):
        pass

    def execute(self, parameters, context, feedback, progress):
        layer = self.parameterAsRasterLayer(parameters, "INPUT", context)
        output = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        seed = self.parameterAsInt(parameters, "SEED", context)
        summary = self.make(layer.source(), output, seed, parameters, context, progress)
        style_output(context, output, self.STYLE, self.fit(summary))
        return dict(summary, OUTPUT=output)

    def fit(self, summary):
        return None


class ClusterMap(_FeatureMap):
    NAME = "clustermap"
    STYLE = "clusters.qml"
    OUTPUT_LABEL = "Clusters"

    def init_extra(self):
        self.add_number("K", "Number of clusters", 8, minimum=2, maximum=254)

    def make(self, path, output, seed, parameters, context, progress):
        from ..core.maps import cluster_map
        k = self.parameterAsInt(parameters, "K", context)
        s = cluster_map(path, output, k=k, seed=seed, progress=progress)
        return {"K": s["k"]}

    def fit(self, summary):  # the legend lists exactly the K classes
        return first_classes(summary["K"])


class PcaMap(_FeatureMap):
    NAME = "pcamap"
    STYLE = "pca.qml"
    OUTPUT_LABEL = "PCA colours"

    def make(self, path, output, seed, parameters, context, progress):
        from ..core.maps import pca_map
        s = pca_map(path, output, seed=seed, progress=progress)
        return {"EXPLAINED_VARIANCE": s["explained_variance_ratio"]}
