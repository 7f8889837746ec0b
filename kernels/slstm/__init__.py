from .naive import SLSTMState, slstm_recurrent, slstm_step, slstm_zero_state

__all__ = ["SLSTMState", "slstm_recurrent", "slstm_step", "slstm_zero_state"]
