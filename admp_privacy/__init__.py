"""Privacy maths and settings: client-level differential privacy (``dp``: clipping, noise, projections)
and the secure-aggregation section (``secure``)."""
