"""What the model server and its runtimes both need: status codes and errors, run costs.

Imports nothing else of the package, so the runtimes depend on this and not on their host.
"""
