"""Widgets of the chat app: the chat view, the prompt input, the conversation list and
the status bar. Each owns its own display; none talks to the engine or the store."""
