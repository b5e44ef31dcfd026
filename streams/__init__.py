"""Atlas stream processing: the Faust app, its settings, composition root and CLI."""
