"""The remote layer: replicas on untrusted storage: push, pull, restore, lease (DESIGN §2.6).

Not implemented yet; the package exists so the layer contract covers it.
"""
