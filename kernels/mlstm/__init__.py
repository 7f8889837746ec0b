from .chunkwise import mlstm_chunkwise
from .naive import MLSTMState, mlstm_parallel, mlstm_recurrent, mlstm_step, zero_state

__all__ = ["MLSTMState", "mlstm_chunkwise", "mlstm_parallel", "mlstm_recurrent", "mlstm_step", "zero_state"]
