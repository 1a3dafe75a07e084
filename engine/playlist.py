"""Render HLS playlists (RFC 8216) from segment records. Pure functions; no I/O.

Every rendered playlist is parsed back with the ``m3u8`` library and checked against what was
meant (:func:`validate_media`, :func:`validate_master`) before it is published.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import m3u8

from engine.gop import RATE_JITTER
from engine.iframes import IFrameRange
from engine.segment import SegmentRecord

AUDIO_GROUP = "audio"
SUBTITLE_GROUP = "subtitles"
CAPTION_GROUP = "cc"
#: fMP4 segments need version 7 (EXT-X-MAP in a media playlist without I-frames-only is 6+).
_VERSION = 7
#: Where an EVENT playlist asks players to start (``EXT-X-START``'s TIME-OFFSET, seconds): at
#: the beginning, not near the live edge. One millisecond rather than 0: Shaka Player (5.2.12)
#: tests the offset for truth, so it ignores 0 and starts a growing playlist near its end (6 s
#: into one listing 12 s). A millisecond lies in the first segment, where players that start
#: at a segment's boundary begin (RFC 8216 4.3.5.2, PRECISE=NO), and in its first frame.
START_OFFSET = "0.001"
#: The frame rates cameras and editors make. A rate measured from frame times (a phone's
#: variable rate, a camera whose clock jitters, an average that counts the last frame short)
#: within ``RATE_JITTER`` of one of them is listed as it: 30 fps measured 29.863 or 30.2.
_NOMINAL_RATES = tuple(Fraction(r) for r in ("24000/1001", "24", "25", "30000/1001", "30", "48",
                                              "50", "60000/1001", "60"))


@dataclass(frozen=True)
class Variant:
    """One rung as the master playlist lists it."""

    uri: str
    bandwidth: int
    average_bandwidth: int
    codecs: str
    width: int
    height: int
    frame_rate: Fraction
    #: The CEA-608 channels ("CC1" to "CC4") its pictures carry captions on.
    captions: tuple[str, ...] = ()
    #: Known to carry no captions at all: a complete rung (every rung is encoded from every
    #: decoded frame, so one complete rung knows for the whole source).
    uncaptioned: bool = False
    #: Its I-frame playlist (a complete rung's), and that playlist's peak bits per second.
    iframes_uri: str | None = None
    iframes_bandwidth: int = 0


@dataclass(frozen=True)
class AudioRendition:
    """An audio rendition, shared by every rung, as the master playlist lists it."""

    uri: str
    channels: int
    #: A BCP 47 tag; None: "und".
    language: str | None = None
    #: Unique in the group, with no double quote (see engine.probe.rendition_name).
    name: str = "Audio 1"


@dataclass(frozen=True)
class SubtitleRendition:
    """One WebVTT subtitle rendition as the master playlist lists it."""

    uri: str
    #: Unique in the group, with no double quote (see engine.subtitles).
    name: str
    language: str | None
    default: bool
    forced: bool


def target_duration(segments: Sequence[SegmentRecord]) -> int:
    """EXT-X-TARGETDURATION: every EXTINF rounded to the nearest integer must fit under it."""
    return max([1, *(math.floor(s.duration_s + 0.5) for s in segments)])


def media_playlist(segments: Sequence[SegmentRecord], target: int, *, event: bool = False,
                   ended: bool = True, iframes: Sequence[IFrameRange] | None = None) -> str:
    """A media playlist: VOD (complete), or EVENT (segments only ever appended) while a rung is
    still encoding, ``ended`` once it is complete. Given ``iframes`` (one a segment), the
    rung's I-frame playlist: each segment's I-frame as a byte range of its file, lasting until
    the next segment's (RFC 8216 4.3.3.6).

    An EVENT playlist says where to start (``EXT-X-START``, :data:`START_OFFSET`): without
    it players start near the live edge instead of at the beginning.
    """
    lines = [
        "#EXTM3U",
        f"#EXT-X-VERSION:{_VERSION}",
        f"#EXT-X-TARGETDURATION:{target}",
        "#EXT-X-MEDIA-SEQUENCE:0",
        f"#EXT-X-PLAYLIST-TYPE:{'EVENT' if event else 'VOD'}",
        "#EXT-X-INDEPENDENT-SEGMENTS",
    ]
    if iframes is not None:
        lines.append("#EXT-X-I-FRAMES-ONLY")
    if event:
        lines.append(f"#EXT-X-START:TIME-OFFSET={START_OFFSET}")
    init_uri = None
    for index, segment in enumerate(segments):
        if segment.discontinuity:
            lines.append("#EXT-X-DISCONTINUITY")
        if segment.init_uri and segment.init_uri != init_uri:
            init_uri = segment.init_uri
            lines.append(f'#EXT-X-MAP:URI="{init_uri}"')
        lines.append(f"#EXTINF:{_extinf(segment.duration_s)},")
        if iframes is not None:
            lines.append(f"#EXT-X-BYTERANGE:{iframes[index].length}@{iframes[index].offset}")
        lines.append(segment.uri)
    if ended or not event:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def variant_bandwidth(video: Sequence[SegmentRecord],
                      audio: Sequence[Sequence[SegmentRecord]]) -> tuple[int, int]:
    """(BANDWIDTH, AVERAGE-BANDWIDTH) bits per second of a rung played with the shared audio
    (the segments of each audio rendition).

    RFC 8216 4.3.4.2: the sum of the renditions' peak segment bit rates, and the sum of their
    average segment bit rates, each rendition over its own segments; of the audio renditions,
    the one that needs the most (a player may pick any). Pairing audio segment ``i``
    with video segment ``i`` declared less than a player can need (the two are not cut at the
    same instants when the video's frames are seconds apart, or the audio ends early), and an
    average over the video's duration alone came out above the peak for audio that outlasts it.
    """
    def peak(segments: Sequence[SegmentRecord]) -> float:
        return max((s.bitrate for s in segments), default=0.0)

    def average(segments: Sequence[SegmentRecord]) -> float:
        duration = sum(s.duration_s for s in segments)
        return 8 * sum(s.size_bytes for s in segments) / duration if duration > 0 else 0.0

    return (math.ceil(peak(video) + max(map(peak, audio), default=0.0)),
            math.ceil(average(video) + max(map(average, audio), default=0.0)))


def listed_frame_rate(rate: Fraction) -> Fraction:
    """``rate`` as the master playlist lists it: the nearest common rate when it is that close
    to one (see ``_NOMINAL_RATES``), else itself."""
    nearest = min(_NOMINAL_RATES, key=lambda nominal: abs(nominal - rate))
    return nearest if abs(nearest - rate) <= RATE_JITTER * nearest else rate


def master_playlist(variants: Sequence[Variant], audio: Sequence[AudioRendition],
                    subtitles: Sequence[SubtitleRendition] = ()) -> str:
    """The master playlist listing ``variants`` in the order given (lowest first), each with
    the audio and the subtitle renditions. A group has one DEFAULT=YES at most (RFC 8216
    4.3.4.1.1): the first audio rendition (the main track), the first subtitle rendition
    flagged default.

    Closed captions in the pictures are declared as a CLOSED-CAPTIONS group with a rendition
    per channel, off until chosen: Apple's players list declared captions by name and let the
    viewer's captions setting choose them (undeclared, they offer "Unknown CC"). Where every
    variant is known to carry none, each says CLOSED-CAPTIONS=NONE, as Apple asks; never while
    that is not known (a rung listed early), since NONE tells a player to ignore captions that
    are there (hls.js stops looking)."""
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{_VERSION}", "#EXT-X-INDEPENDENT-SEGMENTS"]
    for index, sound in enumerate(audio):
        lines.append(
            f'#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="{AUDIO_GROUP}",NAME="{sound.name}",'
            f'LANGUAGE="{sound.language or "und"}",DEFAULT={"NO" if index else "YES"},'
            f'AUTOSELECT=YES,CHANNELS="{sound.channels}",URI="{sound.uri}"'
        )
    default = next((s for s in subtitles if s.default), None)
    # Every rendition says its LANGUAGE, "und" (undetermined, BCP 47) where the source names
    # none, as the audio's does: Apple's authoring specification asks for it on every
    # EXT-X-MEDIA but VIDEO (8.10; 4.4 for captions, 4.7 for subtitles).
    for rendition in subtitles:
        lines.append(
            f'#EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID="{SUBTITLE_GROUP}",NAME="{rendition.name}",'
            f'LANGUAGE="{rendition.language or "und"}",'
            f'DEFAULT={"YES" if rendition is default else "NO"},AUTOSELECT=YES,'
            f'FORCED={"YES" if rendition.forced else "NO"},URI="{rendition.uri}"')
    for channel in sorted({c for v in variants for c in v.captions}):
        # A CEA-608 channel names no language.
        lines.append(
            f'#EXT-X-MEDIA:TYPE=CLOSED-CAPTIONS,GROUP-ID="{CAPTION_GROUP}",NAME="{channel}",'
            f'LANGUAGE="und",DEFAULT=NO,AUTOSELECT=YES,INSTREAM-ID="{channel}"')
    for v in variants:
        attributes = [
            f"BANDWIDTH={v.bandwidth}",
            f"AVERAGE-BANDWIDTH={v.average_bandwidth}",
            f'CODECS="{v.codecs}"',
            f"RESOLUTION={v.width}x{v.height}",
            f"FRAME-RATE={float(listed_frame_rate(v.frame_rate)):.3f}",
        ]
        if audio:
            attributes.append(f'AUDIO="{AUDIO_GROUP}"')
        if subtitles:
            attributes.append(f'SUBTITLES="{SUBTITLE_GROUP}"')
        if (captions := _closed_captions(v, variants)) is not None:
            attributes.append(f"CLOSED-CAPTIONS={captions}")
        lines += ["#EXT-X-STREAM-INF:" + ",".join(attributes), v.uri]
    for v in variants:
        if v.iframes_uri is not None:
            # CODECS names the video alone: an I-frame playlist has no sound.
            lines.append(f"#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH={v.iframes_bandwidth},"
                         f'CODECS="{_video_codecs(v)}",RESOLUTION={v.width}x{v.height},'
                         f'URI="{v.iframes_uri}"')
    return "\n".join(lines) + "\n"


def _video_codecs(variant: Variant) -> str:
    # A variant's CODECS lists its video first, then the audio's (engine.publish).
    return variant.codecs.split(",")[0]


def _extinf(duration_s: float) -> str:
    return f"{duration_s:.6f}"


def iframes_bandwidth(segments: Sequence[SegmentRecord], iframes: Sequence[IFrameRange]) -> int:
    """An I-frame playlist's BANDWIDTH: its peak, each I-frame's bytes over its EXTINF as
    written (a player's reckoning: a short segment's rounding put the peak 0.5 bit/s over it)."""
    durations = [float(_extinf(s.duration_s)) for s in segments]
    return math.ceil(max((8 * i.length / d for d, i in zip(durations, iframes, strict=True)
                          if d > 0), default=0.0))


#: What wraps an I-frame, at most: MPEG-TS carries 184 bytes of every 188-byte packet (and the
#: PAT, PMT and PES headers before); an fMP4 fragment's ``moof`` takes up to 16 bytes a sample,
#: 60 samples a second (engine.decode's cap), beside its headers.
_TS_PAYLOAD = Fraction(184, 188)
_WRAP_BYTES = 4096
_WRAP_BYTES_PER_S = 16 * 60


def iframes_ceiling(bufsize_kbps: int, segment_seconds: float) -> int:
    """A ceiling for an I-frame playlist's BANDWIDTH (as :func:`iframes_bandwidth` reckons
    it) while its rung encodes: an IDR frame holds at most the encoder's VBV buffer, and a
    segment lasts ``segment_seconds``, give or take a frame, but the last one and one cut short
    where a failed encoder was replaced (engine.rung), which can go over it."""
    iframe = 1000 * bufsize_kbps / 8 / _TS_PAYLOAD + _WRAP_BYTES
    return math.ceil(8 * (iframe / Fraction(segment_seconds) + _WRAP_BYTES_PER_S))


def _uncaptioned(variants: Sequence[Variant]) -> bool:
    # RFC 8216 4.3.4.2: NONE on one EXT-X-STREAM-INF means NONE on every one.
    return bool(variants) and all(v.uncaptioned for v in variants)


def _closed_captions(variant: Variant, variants: Sequence[Variant]) -> str | None:
    """The variant's CLOSED-CAPTIONS attribute as written (the m3u8 library reads it back as
    written, quotes and all), or None for none."""
    if variant.captions:
        return f'"{CAPTION_GROUP}"'
    return "NONE" if _uncaptioned(variants) else None


def validate_media(text: str, segments: Sequence[SegmentRecord], *, event: bool = False,
                   ended: bool = True, iframes: Sequence[IFrameRange] | None = None) -> None:
    """Parse a media playlist back and check it says what ``segments`` (and ``iframes``) say."""
    parsed = m3u8.loads(text)
    if parsed.is_variant or parsed.playlist_type != ("event" if event else "vod"):
        raise ValueError("media playlist is not of the intended type")
    if parsed.is_i_frames_only != (iframes is not None) or (
            iframes is not None
            and [s.byterange for s in parsed.segments] != [f"{i.length}@{i.offset}"
                                                          for i in iframes]):
        raise ValueError("media playlist's I-frames are not the ones found")
    if parsed.is_endlist != (ended or not event):
        raise ValueError("media playlist's end tag is wrong")
    if [s.uri for s in parsed.segments] != [s.uri for s in segments]:
        raise ValueError("media playlist lists other segments than were written")
    if any(round(s.duration) > parsed.target_duration for s in parsed.segments):
        raise ValueError("a segment is longer than the target duration")


def validate_master(text: str, variants: Sequence[Variant],
                    audio: Sequence[AudioRendition] = (),
                    subtitles: Sequence[SubtitleRendition] = ()) -> None:
    """Parse a master playlist back and check it lists exactly ``variants``, ``audio`` and
    ``subtitles``, and declares the captions the variants carry."""
    parsed = m3u8.loads(text)
    if not parsed.is_variant:
        raise ValueError("master playlist is not a variant playlist")
    listed = [(p.uri, p.stream_info.bandwidth) for p in parsed.playlists]
    if listed != [(v.uri, v.bandwidth) for v in variants]:
        raise ValueError("master playlist does not list the published rungs")
    trick = [(p.uri, p.iframe_stream_info.bandwidth) for p in parsed.iframe_playlists]
    if trick != [(v.iframes_uri, v.iframes_bandwidth) for v in variants if v.iframes_uri]:
        raise ValueError("master playlist does not list the rungs' I-frame playlists")
    sounds = [(m.uri, m.name) for m in parsed.media if m.type == "AUDIO"]
    if sounds != [(a.uri, a.name) for a in audio]:
        raise ValueError("master playlist does not list the audio renditions")
    texts = [(m.uri, m.name) for m in parsed.media if m.type == "SUBTITLES"]
    if texts != [(s.uri, s.name) for s in subtitles]:
        raise ValueError("master playlist does not list the subtitle renditions")
    declared = {m.instream_id for m in parsed.media if m.type == "CLOSED-CAPTIONS"}
    if declared != {c for v in variants for c in v.captions} or any(
            p.stream_info.closed_captions != _closed_captions(v, variants)
            for p, v in zip(parsed.playlists, variants, strict=True)):
        raise ValueError("master playlist does not declare the closed captions")
