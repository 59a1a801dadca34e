"""Wire contracts shared by the control plane, the bridge, the agent and the simulator.

Nothing in this package imports Django: devices run it without the control plane.
"""
