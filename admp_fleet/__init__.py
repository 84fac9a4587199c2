"""The simulated fleet's realism: device classes, availability and the fleet clock (``profiles``), and
injected faults (``faults``). Pure functions of the root seed; no Flower."""
