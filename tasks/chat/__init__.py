"""Chat: sampling settings, model backends (in process, Ollama), the Gradio app and its sessions.

Other areas use only what is named here.
"""

from tasks.chat.backends import ChatModelOptions, make_chat_model

__all__ = ["ChatModelOptions", "make_chat_model"]
