<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.22.0" styleCategories="AllStyleCategories">
  <pipe>
    <rasterrenderer type="singlebandpseudocolor" band="1" opacity="1" nodataColor="" alphaBand="-1" classificationMin="0.0" classificationMax="1.0">
      <rasterTransparency/>
      <minMaxOrigin><limits>MinMax</limits><extent>WholeRaster</extent><statAccuracy>Exact</statAccuracy><cumulativeCutLower>0.02</cumulativeCutLower><cumulativeCutUpper>0.98</cumulativeCutUpper><stdDevFactor>2</stdDevFactor></minMaxOrigin>
      <rastershader>
        <colorrampshader colorRampType="INTERPOLATED" classificationMode="1" clip="0" minimumValue="0.0" maximumValue="1.0" labelPrecision="3">
            <item value="0.000000" color="#000004" alpha="255" label="0.000"/>
            <item value="0.250000" color="#51127c" alpha="255" label="0.250"/>
            <item value="0.500000" color="#b73779" alpha="255" label="0.500"/>
            <item value="0.750000" color="#fc8961" alpha="255" label="0.750"/>
            <item value="1.000000" color="#fcfdbf" alpha="255" label="1.000"/>
        </colorrampshader>
      </rastershader>
    </rasterrenderer>
    <brightnesscontrast brightness="0" contrast="0" gamma="1"/>
    <huesaturation saturation="0" grayscaleMode="0" colorizeOn="0"/>
    <rasterresampler maxOversampling="2"/>
  </pipe>
  <blendMode>0</blendMode>
</qgis>
