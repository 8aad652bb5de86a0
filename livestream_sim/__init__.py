"""A loopback Adobe Analytics Live Stream, to test, demonstrate and benchmark the bridge with.

Not part of the bridge: ``bridge`` never imports it (``livestream-bridge simulate`` does,
when it runs), and it imports nothing from ``bridge``. Modules:

    server     Simulator: listeners, routing, the token, enable and admin endpoints
    streams    what a stream carries: production, slots, ghosts, resume, modes, faults
    wire       HTTP/1.1 on raw sockets: requests, query rules, chunks, how a client left
    recordlog  the one logical sequence of records, what was produced and sent
    corpus     the cycled record templates and how a connection's body is compressed
    fakehits   realistic fake hits and malformed lines
    config     SimulatorConfig, every field a command-line flag
    cli        livestream-sim, python -m livestream_sim, livestream-bridge simulate
"""

from livestream_sim.config import SimulatorConfig
from livestream_sim.recordlog import RETAINED_RECORDS
from livestream_sim.server import Simulator

__all__ = ["RETAINED_RECORDS", "Simulator", "SimulatorConfig"]
