<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.22.0" styleCategories="AllStyleCategories">
  <pipe>
    <rasterrenderer type="singlebandpseudocolor" band="1" opacity="1" nodataColor="" alphaBand="-1" classificationMin="-1.0" classificationMax="1.0">
      <rasterTransparency/>
      <minMaxOrigin><limits>MinMax</limits><extent>WholeRaster</extent><statAccuracy>Exact</statAccuracy><cumulativeCutLower>0.02</cumulativeCutLower><cumulativeCutUpper>0.98</cumulativeCutUpper><stdDevFactor>2</stdDevFactor></minMaxOrigin>
      <rastershader>
        <colorrampshader colorRampType="INTERPOLATED" classificationMode="1" clip="0" minimumValue="-1.0" maximumValue="1.0" labelPrecision="2">
            <item value="-1.000000" color="#440154" alpha="255" label="-1.00"/>
            <item value="-0.500000" color="#3b528b" alpha="255" label="-0.50"/>
            <item value="0.000000" color="#21918c" alpha="255" label="0.00"/>
            <item value="0.500000" color="#5ec962" alpha="255" label="0.50"/>
            <item value="1.000000" color="#fde725" alpha="255" label="1.00"/>
        </colorrampshader>
      </rastershader>
    </rasterrenderer>
    <brightnesscontrast brightness="0" contrast="0" gamma="1"/>
    <huesaturation saturation="0" grayscaleMode="0" colorizeOn="0"/>
    <rasterresampler maxOversampling="2"/>
  </pipe>
  <blendMode>0</blendMode>
</qgis>
