"""``python -m bench``: Rungs against the ffmpeg CLI on the same source, same encoder settings.

Four systems run interleaved (A B C D A B C D ...) for several rounds. The engine API run and the
ffmpeg ones each get a process of their own, reaped with ``os.wait4`` (its CPU seconds, its peak
RSS beside the process tree's, sampled); the gRPC server's CPU seconds and sampled RSS are
taken over each job:

``rungs``
    the engine API in a subprocess that has done its imports (:mod:`bench.engine_api`), timed
    from the call.
``rungs_grpc``
    the gRPC service: one warm ``rungs serve``, a Transcode call a round (:mod:`bench.service`).
``ffmpeg_all_at_once``
    one ffmpeg process: one decode, a split filter, three libx264 encodes writing HLS.
``ffmpeg_per_rung``
    one ffmpeg process per rung, lowest first, one after another (three decodes): the naive
    progressive system.
"""
