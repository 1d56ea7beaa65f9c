"""XGBoost model service (port 8013, R6.2): a registry XGBoost model, run through ONNX
Runtime, one PredictionGenerated per bar; see :mod:`tradepipe.services.model_service`."""

from __future__ import annotations

from tradepipe.services.model_service import ModelService


class XGBoostService(ModelService):
    name = "ml-xgboost"
    port = 8013
    kind = "xgboost"


__all__ = ["XGBoostService"]
