"""``python -m bench``: Rungs against the ffmpeg CLI on the same source, same encoder settings.

Three systems run interleaved (A B C A B C ...) for several rounds, each in its own process so
wall time, CPU seconds and peak RSS are measured the same way for all of them:

``rungs``
    the engine through its command line (``python -m engine.cli transcode --json``).
``ffmpeg_all_at_once``
    one ffmpeg process: one decode, a split filter, three libx264 encodes writing HLS.
``ffmpeg_per_rung``
    one ffmpeg process per rung, lowest first, one after another (three decodes): the naive
    progressive system.
"""
