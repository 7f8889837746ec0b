from .chunkwise import mlstm_chunkwise
from .naive import MLSTMState, mlstm_parallel, mlstm_recurrent, mlstm_step, zero_state
from .summary import mlstm_final_state, mlstm_sequence_summary

__all__ = ["MLSTMState", "mlstm_chunkwise", "mlstm_final_state", "mlstm_parallel", "mlstm_recurrent", "mlstm_sequence_summary",
           "mlstm_step", "zero_state"]
