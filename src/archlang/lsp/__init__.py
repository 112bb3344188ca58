"""`archc lsp`: a language server for .arch files (diagnostics as you type, hover, go to
definition, formatting). `analysis.py` computes the answers; `server.py` speaks the protocol
through pygls (`pip install 'archlang[lsp]'`)."""
