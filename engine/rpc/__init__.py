"""Python code generated from ``protos/rungs/v1/transcoder.proto`` (the ``rungs.v1`` API).

``transcoder_pb2`` (messages, with a ``.pyi`` for type checkers) and ``transcoder_pb2_grpc``
(stub, servicer registration) are written by grpcio-tools and committed; never edit them by
hand: change the proto and run ``python -m engine.rpc.generate``. A test regenerates them and
fails on any difference, so the proto and this package cannot drift apart.
"""
