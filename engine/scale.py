"""Scale a decoded frame to a rung's size and turn it upright (unmirrored).

Every user (each rung thread, the poster) owns its own :class:`Scaler`: one shared reformatter
used from two threads crashed the interpreter on this project's machines.
"""

from __future__ import annotations

import av.video.frame
import numpy as np
from av.video.reformatter import ColorRange, Interpolation, VideoReformatter

from engine.decode import PIXEL_FORMAT, plane_array
from engine.probe import Colour, Orientation
from engine.tonemap import ToneMapper

#: AREA keeps detail when shrinking 4K to 720p and is about twice as fast as BICUBIC here.
INTERPOLATION = Interpolation.AREA
#: The same, as FFmpeg's scale filter names it (for HDR sources' mapping graph).
INTERPOLATION_FLAGS = "area"


class Scaler:
    """Frames in at the source's coded size, frames out at ``width`` x ``height``, upright.

    With ``full_range``, the frames coming in hold full-range samples (whatever they are
    tagged: the frame cache's are not) and the frames going out video-range ones. With an HDR
    ``colour`` (the source's), they are mapped to SDR as they are scaled (see engine.tonemap).
    """

    def __init__(self, width: int, height: int, orientation: Orientation,
                 pixel_format: str = PIXEL_FORMAT, full_range: bool = False,
                 colour: Colour | None = None) -> None:
        self.width = width
        self.height = height
        self.orientation = orientation
        self.pixel_format = pixel_format
        self._ranges: dict[str, ColorRange] = (
            {"src_color_range": ColorRange.JPEG, "dst_color_range": ColorRange.MPEG}
            if full_range else {})
        self._reformatter = VideoReformatter()
        sideways = orientation.sideways
        self._size = (height, width) if sideways else (width, height)
        self._tone_mapper = (ToneMapper(colour, *self._size, INTERPOLATION_FLAGS)
                             if colour is not None and colour.hdr else None)

    def scale(self, frame: av.video.frame.VideoFrame) -> av.video.frame.VideoFrame:
        """A frame of the target size (the input itself when nothing needs doing)."""
        width, height = self._size
        if self._tone_mapper is not None:
            # The mapper gives video-range PIXEL_FORMAT; the poster wants full-range JPEG's.
            frame = self._tone_mapper.map(frame)
        out = self._reformatter.reformat(frame, width=width, height=height,
                                         format=self.pixel_format, interpolation=INTERPOLATION,
                                         **({} if self._tone_mapper else self._ranges))
        if self.orientation == Orientation():
            return out
        return orient(out, self.orientation)


def orient(frame: av.video.frame.VideoFrame,
           orientation: Orientation) -> av.video.frame.VideoFrame:
    """A planar 8-bit frame turned and mirrored as ``orientation`` says."""
    planes = [np.rot90(plane_array(p), k=-orientation.clockwise // 90) for p in frame.planes]
    if orientation.mirrored:
        planes = [plane[:, ::-1] for plane in planes]
    height, width = planes[0].shape
    out = av.video.frame.VideoFrame(width, height, frame.format.name)
    for plane, data in zip(out.planes, planes, strict=True):
        plane_array(plane)[:] = data
    return out

