"""Tool calling: each model family's tool-call format (`formats`), the parser that turns a
reply into text and calls (`parser`), and how tools reach the prompt (`prompt`)."""
