"""LSTM model service (port 8014, R6.2): a registry LSTM over the last ``card.window`` input
vectors of a symbol, run through ONNX Runtime. The per-symbol window is service state (part
of the snapshot); until it is full, and while it holds a vector with NaN, the fallback
answers. See :mod:`tradepipe.services.model_service`."""

from __future__ import annotations

from tradepipe.services.model_service import ModelService


class LSTMService(ModelService):
    name = "ml-lstm"
    port = 8014
    kind = "lstm"


__all__ = ["LSTMService"]
