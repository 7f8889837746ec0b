from .naive import SLSTMState, slstm_recurrent, slstm_step, slstm_zero_state
from .recurrent import slstm_recurrent_manual_backward

__all__ = ["SLSTMState", "slstm_recurrent", "slstm_recurrent_manual_backward", "slstm_step", "slstm_zero_state"]
