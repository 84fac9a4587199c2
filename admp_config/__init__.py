"""The scenario schema: typed pydantic sections (``sections``, ``federation``), the scenario and its
loading and ``auto`` resolution (``schema``), the base every section builds on (``base``) and one
source per choice list (``choices``). Imports no torch, Flower or ONNX Runtime."""
