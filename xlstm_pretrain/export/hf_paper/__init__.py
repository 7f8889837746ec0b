"""Standalone Hugging Face code for the paper family (mLSTM + sLSTM blocks), which ``transformers`` has no
class for. The two modules here are *copied verbatim* into every exported paper-family folder and loaded
by ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)``: they import only ``torch`` and
``transformers`` (never this project), so an exported folder works on a machine without xlstm-pretrain.

Nothing is imported here on purpose: the package stays importable without ``transformers``.
"""

MODULE_FILES = ("configuration_xlstm_paper.py", "modeling_xlstm_paper.py")
