"""qlnumba: QL-LSTM (and LSTM, GRU baselines) in Numba, with manual BPTT and Adam."""
from .layers import GRU, QLLSTM, recurrent_param_count

__version__ = "0.1.0"
__all__ = ["QLLSTM", "GRU", "recurrent_param_count", "__version__"]
