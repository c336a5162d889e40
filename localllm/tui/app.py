"""`ChatApp`: the Textual app behind `localllm chat`.

The app owns what outlives a screen: the settings, the conversation store, the loaded
model and the theme. Loading runs on a thread worker that closes the previous model
first (so two models never sit in memory together) and posts `ModelLoaded` or
`ModelLoadFailed`; failures become dialogs (a missing model offers a pull) and the app
keeps running. Everything that can go wrong in a worker arrives here as a message.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from textual.app import App
from textual.binding import Binding

from localllm.tui.messages import ModelLoaded, ModelLoadFailed
from localllm.tui.screens.chat import ChatScreen
from localllm.tui.screens.dialogs import ConfirmDialog, ErrorDialog
from localllm.tui.screens.help import HelpScreen, binding_rows
from localllm.tui.screens.model_picker import ModelPickerScreen, default_list_models
from localllm.tui.store import ConversationSettings, ConversationStore
from localllm.tui.widgets.chat_view import MessageBubble
from localllm.tui.widgets.conversation_list import ConversationOptions
from localllm.tui.widgets.prompt_input import PromptInput
from localllm.tui.workers import default_loader, load_model_worker, model_label
from localllm.types import DraftParams

THEMES = ("textual-dark", "textual-light")


class ChatApp(App):
    """Chat with local models. `model` is a registry name or a GGUF path (or None: the
    last one used, else the first pulled one, else the picker opens). With a model, a
    new conversation starts unless `resume` (then the last one reopens, on `model`)."""

    CSS_PATH = "chat.tcss"
    TITLE = "localllm chat"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("f1", "help", "Help", tooltip="This list of keys"),
        Binding("ctrl+t", "toggle_theme", "Light/dark theme", show=False),
        Binding("ctrl+q", "quit", "Quit", tooltip="Quit (the chat is already saved)"),
    ]

    def __init__(
        self,
        settings,
        model: str | None = None,
        *,
        loader=default_loader,
        list_models=default_list_models,
        pull=None,
        store: ConversationStore | None = None,
        conversation_defaults: ConversationSettings | None = None,
        theme: str | None = None,
        resume: bool = False,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.initial_model = model
        self.resume = resume
        self.loader = loader
        self.list_models = list_models
        self.pull = pull
        self.store = store or ConversationStore.in_home(Path(settings.home))
        # New chats draft unless the app was started with --draft none.
        self.conversation_defaults = conversation_defaults or ConversationSettings(speculative=settings.draft != "none")
        self.model = None  # a localllm.runtime.LoadedModel once loaded
        self.model_name: str | None = None
        self.model_ctx = 0  # the context size asked for (0: the settings' default)
        self.loading = False
        self._fixed_theme = theme

    def get_default_screen(self) -> ChatScreen:
        self._chat_screen = ChatScreen()
        return self._chat_screen

    @property
    def chat(self) -> ChatScreen:
        """The chat screen, under whatever modal screens are open."""
        return self._chat_screen

    def on_mount(self) -> None:
        if self.store.recovery_notice:
            self.notify(self.store.recovery_notice, severity="warning", timeout=30)
        self.theme = self._fixed_theme or self.store.pref("theme", THEMES[0])
        self.call_after_refresh(self.choose_startup_model)

    def choose_startup_model(self) -> None:
        chat = self.chat
        name = self.initial_model or (chat.conversation.model if chat.conversation else "") or self.store.pref("last_model")
        if not name:
            try:
                entries = list(self.list_models(self.settings))
            except Exception:
                entries = []
            name = entries[0].name if entries else ""
        if name:
            ctx = chat.conversation.settings.ctx_size if chat.conversation else 0
            self.load_model(name, ctx)
        else:
            self.notify("No model yet: pick or pull one", severity="warning")
            self.action_pick_model()

    def overflow_for(self, settings: ConversationSettings) -> str:
        """A chat's overflow policy: its own, else the app's setting."""
        return settings.overflow or self.settings.overflow

    def draft_for(self, settings: ConversationSettings) -> DraftParams:
        """A chat's speculative decoding: its switch turns it on or off; on, the app's
        --draft mode (auto unless it says prompt-lookup), --draft-max and --draft-ngram."""
        app = self.settings.draft_params
        if not settings.speculative:
            return dataclasses.replace(app, mode="none")
        return app if app.mode != "none" else dataclasses.replace(app, mode="auto")

    # model lifecycle

    def model_ready_for(self, ctx_size: int) -> bool:
        return self.model is not None and not self.loading and self.model_ctx == ctx_size

    def load_model(self, name: str, ctx_size: int = 0) -> None:
        """Load `name` in the background; the current model is closed first."""
        chat = self.chat
        pending = chat.pending_send  # a send waiting for this very load survives it
        chat.stop_reply()
        chat.pending_send = pending
        reply = chat.reply
        old, self.model = self.model, None
        self.model_name, self.model_ctx, self.loading = name, ctx_size, True
        chat.status.set_model(name, "", note=f"loading {model_label(name)}…")
        chat.update_context(chat.context_used)

        def work() -> None:
            if reply is not None:
                reply.done.wait(timeout=60)
            if old is not None:
                old.close()
            load_model_worker(name, self.settings, ctx_size, self.post_message, self.loader)

        self.run_worker(work, thread=True, group="load", exit_on_error=False)

    async def on_model_loaded(self, message: ModelLoaded) -> None:
        if message.name != self.model_name or message.ctx_size != self.model_ctx:
            message.model.close()  # superseded by a later request
            return
        self.model, self.loading = message.model, False
        self.store.set_pref("last_model", message.name)
        chat = self.chat
        chat.status.set_model(message.name, message.model.backend_name)
        chat.update_context(chat.context_used)
        await chat.on_model_ready()

    def on_model_load_failed(self, message: ModelLoadFailed) -> None:
        if message.name != self.model_name:
            return
        self.loading = False
        self.model_name = None
        self.chat.pending_send = False
        self.chat.status.set_model(None)
        if message.missing:
            def answer(yes: bool | None) -> None:
                if yes:
                    self.action_pick_model(pull_name=message.name)

            self.push_screen(ConfirmDialog(f"The model “{message.name}” is not pulled yet. Pull it now?", "Pull", "Not now"), answer)
        else:
            self.push_screen(ErrorDialog(f"Could not load {model_label(message.name)}", message.error))

    # actions

    def action_pick_model(self, pull_name: str | None = None) -> None:
        def chosen(name: str | None) -> None:
            if name:
                chat = self.chat
                ctx = chat.conversation.settings.ctx_size if chat.conversation else 0
                if name != self.model_name or not self.model_ready_for(ctx):
                    self.load_model(name, ctx)

        screen = ModelPickerScreen(self.settings, self.model_name, list_models=self.list_models, pull=self.pull, pull_name=pull_name)
        self.push_screen(screen, chosen)

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            return
        sections = [
            ("Chat", binding_rows(ChatScreen.BINDINGS)),
            ("Prompt box", [("Enter", "Send")] + binding_rows(PromptInput.BINDINGS[:1]) + [("Up", "In an empty box: edit your last message")]),
            ("Chat list", [("Enter", "Open the chat")] + binding_rows(ConversationOptions.BINDINGS)),
            ("A focused message (click it or Tab to it)", binding_rows(MessageBubble.BINDINGS)),
            ("Anywhere", binding_rows(self.BINDINGS)),
        ]
        notes = (
            "Copying uses the terminal's clipboard escape (OSC 52): it works in most terminals "
            "(iTerm2, kitty, WezTerm, tmux with `set-clipboard on`), not in macOS Terminal."
        )
        self.push_screen(HelpScreen(sections, notes))

    def action_toggle_theme(self) -> None:
        self.theme = THEMES[1] if self.theme == THEMES[0] else THEMES[0]
        self.store.set_pref("theme", self.theme)

    async def action_quit(self) -> None:
        self.chat.stop_reply()
        self.exit()

    def on_unmount(self) -> None:
        reply = self.chat.stop_reply()
        if reply is not None:
            reply.done.wait(timeout=10)
        if self.model is not None:
            self.model.close()
            self.model = None
        self.store.close()
