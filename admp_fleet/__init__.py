"""The simulated fleet's realism: availability and the fleet clock (``profiles``) and injected faults
(``faults``). Pure functions of the root seed; no Flower. Their settings are ``admp_config.fleet``."""
