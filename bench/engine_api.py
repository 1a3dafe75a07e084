"""Rungs through its engine API, in an interpreter that has done its imports before the job.

A service that embeds the engine imports it once, long before a user's upload arrives, so the
benchmark times the job from the call, not from interpreter start-up (about 0.6 s here: 0.36 s
to the engine's ``running`` event from a cold ``rungs transcode``, of which imports 0.26 s).
Run by path (:func:`bench.commands.rungs_command`, so that ``engine`` is the copy in the working
directory) with the arguments of ``rungs transcode``: it imports the engine, prints
:data:`LOADED` on stdout, waits for a line on stdin, then runs the job in this process through
the command line's own code, one JSON event per line on stdout.
"""

from __future__ import annotations

import sys

import engine.cli

# The command line's parser imports these (the gRPC service's commands) when it is built, which
# took 0.07-0.1 s of each job's time to playable here: import work, not the job's.
import engine.client
import engine.server

#: The line that says the imports are done and the job may be started.
LOADED = "loaded"


def main() -> int:
    print(LOADED, flush=True)
    sys.stdin.readline()
    return engine.cli.main(["transcode", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
