"""Privacy maths: client-level differential privacy (``dp``: clipping, noise, projections). Its settings
(DP and SecAgg+) are sections of the scenario (``admp_config.privacy``)."""
