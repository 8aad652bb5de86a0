"""``python -m livestream_sim``: the simulator's command line."""

from livestream_sim.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
