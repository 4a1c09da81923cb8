"""The db layer:
the application API: persist.open, root, tables, Persistent objects (DESIGN §2.5; issue 6).

Not implemented yet; the package exists so the layer contract covers it.
"""
