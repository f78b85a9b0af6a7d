<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.22.0" styleCategories="AllStyleCategories">
  <pipe>
    <rasterrenderer type="multibandcolor" redBand="1" greenBand="2" blueBand="3" opacity="1" nodataColor="" alphaBand="-1">
      <rasterTransparency/>
      <minMaxOrigin><limits>None</limits><extent>WholeRaster</extent><statAccuracy>Estimated</statAccuracy><cumulativeCutLower>0.02</cumulativeCutLower><cumulativeCutUpper>0.98</cumulativeCutUpper><stdDevFactor>2</stdDevFactor></minMaxOrigin>
      <redContrastEnhancement>
        <ContrastEnhancement><minValue>1</minValue><maxValue>255</maxValue><algorithm>StretchToMinimumMaximum</algorithm></ContrastEnhancement>
      </redContrastEnhancement>
      <greenContrastEnhancement>
        <ContrastEnhancement><minValue>1</minValue><maxValue>255</maxValue><algorithm>StretchToMinimumMaximum</algorithm></ContrastEnhancement>
      </greenContrastEnhancement>
      <blueContrastEnhancement>
        <ContrastEnhancement><minValue>1</minValue><maxValue>255</maxValue><algorithm>StretchToMinimumMaximum</algorithm></ContrastEnhancement>
      </blueContrastEnhancement>
    </rasterrenderer>
    <brightnesscontrast brightness="0" contrast="0" gamma="1"/>
    <huesaturation saturation="0" grayscaleMode="0" colorizeOn="0"/>
    <rasterresampler maxOversampling="2"/>
  </pipe>
  <blendMode>0</blendMode>
</qgis>
