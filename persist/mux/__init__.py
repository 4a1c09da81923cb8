"""The mux layer:
transaction multiplexer: commit waves, atomic blocks, commit-wait (DESIGN §2.4; issue 5).

Not implemented yet; the package exists so the layer contract covers it.
"""
