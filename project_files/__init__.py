"""Which files of a user's project may become context, and the walk that finds them.

`exclusions.Exclusions` is the one owner of the rule "this file never reaches a prompt"; the
language server, `serve --workspace`, `code-assistant index` and the evaluation all ask it.
`walk` lists the files worth indexing; `indexing` keeps the engine's token index of them current.
Nothing here imports torch.
"""
