"""The studio: a local web page to design architectures (`stcnnt studio`).

`analysis` computes what the page shows (no web dependencies); `server` is the FastAPI
app and the command's handler (needs the `studio` extra: FastAPI and uvicorn); `static/`
holds the page itself (plain HTML, CSS and JavaScript, served from the package).
"""
