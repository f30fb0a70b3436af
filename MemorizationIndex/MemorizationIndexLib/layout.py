"""The module's side-by-side view layout: query + MI heatmap | nearest training slice, MI chart below."""

from __future__ import annotations

LAYOUT_ID = 7301  # custom layouts need an ID of at least 100
QUERY_VIEW = "Red"
NEIGHBOR_VIEW = "Yellow"
PLOT_VIEW_TAG = "MemorizationIndexPlot"


def _slice_view(tag: str, label: str, color: str) -> str:
    return f"""<item><view class="vtkMRMLSliceNode" singletontag="{tag}">
        <property name="orientation" action="default">Axial</property>
        <property name="viewlabel" action="default">{label}</property>
        <property name="viewcolor" action="default">{color}</property>
      </view></item>"""


def layout_xml() -> str:
    """The layout description for ``vtkMRMLLayoutNode.AddLayoutDescription(LAYOUT_ID, ...)``."""
    return f"""<layout type="vertical" split="true">
  <item splitSize="650">
    <layout type="horizontal" split="true">
      {_slice_view(QUERY_VIEW, "R", "#F34A33")}
      {_slice_view(NEIGHBOR_VIEW, "Y", "#EDD54C")}
    </layout>
  </item>
  <item splitSize="300">
    <view class="vtkMRMLPlotViewNode" singletontag="{PLOT_VIEW_TAG}">
      <property name="viewlabel" action="default">MI</property>
    </view>
  </item>
</layout>"""
