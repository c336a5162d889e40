"""Screens of the chat app: the chat itself and the modal screens over it (model
picker, conversation settings, help, small dialogs)."""
