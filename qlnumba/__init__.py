"""qlnumba: QL-LSTM (and LSTM, GRU baselines) in Numba, with manual BPTT and Adam."""
from .layers import GRU, QLLSTM, recurrent_param_count
from .lm import LanguageModel
from .model import MODEL_KINDS, SequenceClassifier, count_params
from .optim import Adam

__version__ = "0.1.0"
__all__ = ["QLLSTM", "GRU", "SequenceClassifier", "LanguageModel", "QLLSTMClassifier", "Adam",
           "MODEL_KINDS", "count_params", "recurrent_param_count", "__version__"]


def __getattr__(name):
    """``qlnumba.QLLSTMClassifier`` imports scikit-learn on first use only."""
    if name == "QLLSTMClassifier":
        from .estimator import QLLSTMClassifier
        return QLLSTMClassifier
    raise AttributeError(f"module 'qlnumba' has no attribute {name!r}")
