"""Online inference on Ray Serve: the served model, the HTTP API, the Serve application.

:mod:`emoray.serving.model` finds and loads a checkpoint for a serving role,
:mod:`emoray.serving.decode` turns request bodies into model inputs,
:mod:`emoray.serving.api` is the HTTP API (shared by the Serve router and the plain FastAPI
benchmark server), :mod:`emoray.serving.app` the deployments and the application builder,
:mod:`emoray.serving.client` the Python client behind ``emoray predict``.
"""
