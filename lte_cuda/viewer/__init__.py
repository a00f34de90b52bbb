"""``lte-sr view``: a local web page that zooms into one photo, rendered by LTE on demand.

The server (:mod:`.server`) computes the photo's features once and decodes 256x256 tiles
of any level from them (:mod:`.renderer`, :mod:`.tiles`), newest view first
(:mod:`.scheduler`); the page (``static/``) is hand-written HTML, CSS and JavaScript.
"""

from .launch import start_viewer

__all__ = ["start_viewer"]
