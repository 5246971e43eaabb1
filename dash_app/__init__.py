"""The dtinterp web app: play, inspect, intervene on and analyse a decision transformer's episodes.

``dtinterp app`` (:func:`dash_app.server.cmd_app`) serves it; :func:`dash_app.server.create_app` builds it
for tests. The app renders any analysis plugin from the registry and keeps per-user state in the browser.
"""
