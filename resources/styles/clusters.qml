<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.22.0" styleCategories="AllStyleCategories">
  <pipe>
    <rasterrenderer type="paletted" band="1" opacity="1" nodataColor="" alphaBand="-1">
      <rasterTransparency/>
      <minMaxOrigin><limits>None</limits><extent>WholeRaster</extent><statAccuracy>Estimated</statAccuracy><cumulativeCutLower>0.02</cumulativeCutLower><cumulativeCutUpper>0.98</cumulativeCutUpper><stdDevFactor>2</stdDevFactor></minMaxOrigin>
      <colorPalette>
          <paletteEntry value="0" color="#e6194b" alpha="255" label="class 0"/>
          <paletteEntry value="1" color="#3cb44b" alpha="255" label="class 1"/>
          <paletteEntry value="2" color="#ffe119" alpha="255" label="class 2"/>
          <paletteEntry value="3" color="#4363d8" alpha="255" label="class 3"/>
          <paletteEntry value="4" color="#f58231" alpha="255" label="class 4"/>
          <paletteEntry value="5" color="#911eb4" alpha="255" label="class 5"/>
          <paletteEntry value="6" color="#46f0f0" alpha="255" label="class 6"/>
          <paletteEntry value="7" color="#f032e6" alpha="255" label="class 7"/>
          <paletteEntry value="8" color="#bcf60c" alpha="255" label="class 8"/>
          <paletteEntry value="9" color="#fabebe" alpha="255" label="class 9"/>
          <paletteEntry value="10" color="#008080" alpha="255" label="class 10"/>
          <paletteEntry value="11" color="#e6beff" alpha="255" label="class 11"/>
          <paletteEntry value="12" color="#9a6324" alpha="255" label="class 12"/>
          <paletteEntry value="13" color="#fffac8" alpha="255" label="class 13"/>
          <paletteEntry value="14" color="#800000" alpha="255" label="class 14"/>
          <paletteEntry value="15" color="#aaffc3" alpha="255" label="class 15"/>
      </colorPalette>
    </rasterrenderer>
    <brightnesscontrast brightness="0" contrast="0" gamma="1"/>
    <huesaturation saturation="0" grayscaleMode="0" colorizeOn="0"/>
    <rasterresampler maxOversampling="2"/>
  </pipe>
  <blendMode>0</blendMode>
</qgis>
