<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.22.0" styleCategories="AllStyleCategories">
  <pipe>
    <rasterrenderer type="paletted" band="1" opacity="1" nodataColor="" alphaBand="-1">
      <rasterTransparency/>
      <colorPalette>
          <paletteEntry value="0" color="#d7191c" alpha="160" label="outside the area of applicability"/>
          <paletteEntry value="1" color="#1a9641" alpha="60" label="inside the area of applicability"/>
      </colorPalette>
    </rasterrenderer>
    <brightnesscontrast brightness="0" contrast="0" gamma="1"/>
    <huesaturation saturation="0" grayscaleMode="0" colorizeOn="0"/>
    <rasterresampler maxOversampling="2"/>
  </pipe>
  <blendMode>0</blendMode>
</qgis>
