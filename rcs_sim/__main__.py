"""`python -m rcs_sim`: the simulator on its own, as `rcs-sync simulate` starts it."""

from rcs_sim.cli import simulate

if __name__ == "__main__":
    simulate(prog_name="rcs-sim")
