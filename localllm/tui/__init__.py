"""The terminal chat app (`localllm chat`), built on Textual.

Layout: `app` (the App: settings, store, model lifecycle), `screens/` (chat, model
picker, settings, help, dialogs), `widgets/` (chat view, prompt box, conversation
list, status bar), `messages` (what worker threads post), `workers` (what runs off the
UI thread), `store` (conversations in SQLite), `export` (Markdown), `chat.tcss`.
Importing this package imports nothing heavy; `localllm.tui.app` imports Textual.
"""
