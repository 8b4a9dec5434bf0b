"""The review console: server-rendered pages under /console for the people who judge the model (reviewer and
admin keys): the review queue, captured inferences, rollouts, datasets, keys and usage. Jinja2 templates
and plain forms, one small script for keyboard shortcuts and one stylesheet, both shipped with the package:
no build step, nothing from a CDN, and every page works without script. The pages call the same services as
the admin API and check the same scopes on the server."""

from __future__ import annotations

from fastapi import FastAPI

from gateway.console import assets, datasets, inferences, keys, review, rollouts, signin


def install(app: FastAPI) -> None:
    """The console's pages and its static files, on `app`."""
    for module in (signin, review, inferences, rollouts, datasets, keys):
        app.include_router(module.router)
    app.mount(assets.MOUNT, assets.files, name="console_assets")
