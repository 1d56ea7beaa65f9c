"""LightGBM model service (port 8026, R6.2): a registry LightGBM model, run through ONNX
Runtime, one PredictionGenerated per bar; see :mod:`tradepipe.services.model_service`."""

from __future__ import annotations

from tradepipe.services.model_service import ModelService


class LightGBMService(ModelService):
    name = "ml-lightgbm"
    port = 8026
    kind = "lightgbm"


__all__ = ["LightGBMService"]
