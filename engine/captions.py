"""Closed captions carried inside the picture: CEA-608 and CEA-708 in H.264 A/53 SEI.

Broadcast recordings (and the files made from them) carry their captions in the video stream
itself, a few bytes on each frame. FFmpeg's decoders hand them over as a frame's ``A53_CC`` side
data, and the ffmpeg CLI passes them on to libx264, so a file transcoded by it keeps its
captions; players read them back from the rungs (hls.js makes them a captions track).

Rungs passes them on itself, the same way on every rung: the decoder's thread takes each kept
frame's caption bytes (:func:`frame_captions`, :class:`CaptionCarry`), they travel beside the
frame through the frame cache (a cached frame is rebuilt from pixels alone, so side data cannot
travel on it), and each rung writes them into its own encoded pictures
(:func:`with_captions`). The encoders' own insertion is turned off
(:func:`engine.hwaccel.encoder_options`), or the first rung, whose frames still carry the side
data, would have every caption twice. Each rung notes the CEA-608 channels it carried
(:func:`channels`), which the master playlist declares (:func:`engine.playlist.master_playlist`).
"""

from __future__ import annotations

from typing import Any

import av
import av.video.frame
from av.sidedata.sidedata import SideDataContainer, Type

#: The most caption triples one A/53 SEI holds (``cc_count`` has 5 bits).
MAX_TRIPLES = 31
#: The most triples waiting for a kept frame (four frames' worth).
MAX_WAITING = 4 * MAX_TRIPLES
#: Bit 2 of a triple's first byte: the triple holds data (else it is padding).
_CC_VALID = 0x04
#: H.264 NAL unit types of coded slices (non-IDR and IDR).
_SLICE_TYPES = (1, 5)


def frame_captions(frame: av.video.frame.VideoFrame) -> bytes:
    """The caption triples that hold data on a decoded frame (padding dropped); empty if none."""
    # Not ``frame.side_data``: the frame keeps that container, which refers back to it, so
    # every decoded frame waited for the garbage collector (1.4 GB more on 120 4K frames).
    # (PyAV's stubs leave out the container's constructor.)
    found = SideDataContainer(frame).get(Type.A53_CC)  # type: ignore[call-arg]
    if found is None:
        return b""
    data = bytes(found)
    return b"".join(data[i:i + 3] for i in range(0, len(data) - 2, 3)
                    if data[i] & _CC_VALID)


class CaptionCarry:
    """Captions of the frames kept, with those of frames the frame-rate cap drops carried to
    the next kept frame (120 fps captured with captions on every frame would otherwise lose
    half of them), at most :data:`MAX_TRIPLES` a frame, the rest on the frames after it.

    At most :data:`MAX_WAITING` triples wait; older ones beyond that are dropped. Broadcast
    captions come at a few triples a frame, and a damaged or hostile file with full SEIs on
    thousands of frames a second would otherwise pile up without end, each caption later
    than the one before."""

    def __init__(self) -> None:
        self._pending = b""

    def drop(self, captions: bytes) -> None:
        """A frame that is not kept: its captions go with the next one."""
        self._wait(self._pending + captions)

    def keep(self, captions: bytes) -> bytes:
        """The captions to write on a kept frame whose own are ``captions``."""
        pending = self._pending + captions
        self._wait(pending[3 * MAX_TRIPLES:])
        return pending[:3 * MAX_TRIPLES]

    def _wait(self, triples: bytes) -> None:
        self._pending = triples[-3 * MAX_WAITING:]


def with_captions(packet: av.Packet[Any], captions: bytes) -> av.Packet[Any]:
    """``packet`` (one encoded H.264 picture, in the Annex B form FFmpeg's encoders give) with
    an A/53 SEI holding ``captions`` before its first slice, where libx264's own insertion puts
    it; ``packet`` itself where it has no slice."""
    data = bytes(packet)
    at = _first_slice(data)
    if at is None or not captions:
        return packet
    out: av.Packet[Any] = av.Packet(data[:at] + b"\x00\x00\x00\x01" + _sei_nal(captions)
                                    + data[at:])
    out.pts, out.dts, out.duration = packet.pts, packet.dts, packet.duration
    out.time_base = packet.time_base
    out.is_keyframe = packet.is_keyframe
    out.stream = packet.stream
    return out


def channels(captions: bytes) -> frozenset[str]:
    """The CEA-608 channels (``"CC1"`` to ``"CC4"``, as HLS's INSTREAM-ID names them) that
    caption triples send to.

    A triple of type 0 is a byte pair of field 1 (CC1 and CC2), of type 1 one of field 2 (CC3
    and CC4); its text goes to the channel of the control codes before it, and every caption
    opens with control codes, whose first byte (parity bit aside, 0x10 to 0x1F) names the
    channel in its bit 3. CEA-708 services (types 2 and 3) are not counted: hls.js and Safari
    play the 608 channels.
    """
    found: set[str] = set()
    for at in range(0, len(captions) - 2, 3):
        kind, first = captions[at], captions[at + 1] & 0x7F
        if kind & _CC_VALID and kind & 0x03 < 2 and 0x10 <= first <= 0x1F:
            found.add(f"CC{1 + 2 * (kind & 0x03) + (first >> 3 & 1)}")
    return frozenset(found)


def _first_slice(data: bytes) -> int | None:
    """Where the start code of the first coded slice's NAL unit begins."""
    at = data.find(b"\x00\x00\x01")
    while at >= 0 and at + 3 < len(data):
        if data[at + 3] & 0x1F in _SLICE_TYPES:
            return at - 1 if at > 0 and data[at - 1] == 0 else at
        at = data.find(b"\x00\x00\x01", at + 3)
    return None


def _sei_nal(captions: bytes) -> bytes:
    """An H.264 SEI NAL unit (no start code) with one ATSC A/53 caption message."""
    count = len(captions) // 3
    # ITU-T T.35 (USA, ATSC), "GA94", cc_data: process_cc_data_flag and the count, em_data,
    # the triples, marker bits; as libx264's wrapper writes it, but for its em_data of 0
    # (A/53 reserves that byte: all ones).
    payload = (b"\xb5\x00\x31GA94\x03" + bytes([0x40 | count, 0xFF]) + captions[:3 * count]
               + b"\xff")
    return b"\x06" + escaped(bytes([4, len(payload)]) + payload + b"\x80")


def escaped(rbsp: bytes) -> bytes:
    """A NAL unit's payload with H.264's emulation prevention: no 00 00 0x inside it."""
    out, zeros = bytearray(), 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)
